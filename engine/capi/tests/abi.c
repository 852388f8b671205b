/* Contract tests of the C API, compiled and run by tests/c_api.rs: error codes and messages for bad
 * arguments, cancellation from another thread and from the callback, seeded sampling, reset, chat.
 * Usage: abi <model dir>. Prints "ok" and exits 0 when every check passes. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern.h"

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            const char *last = tern_last_error();                                                  \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__,      \
                    #cond, last ? last : "none");                                                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static int last_error_contains(const char *needle) {
    const char *last = tern_last_error();
    return last && strstr(last, needle);
}

/* Collects the streamed text; stops after `stop_after` tokens when that is positive. */
typedef struct {
    char text[65536];
    size_t len;
    unsigned tokens;
    unsigned stop_after;
    TernSession *cancel_from_thread; /* cancelled by another thread at the 2nd token */
    TernSession *reenter;            /* generating again from inside the callback is refused */
    pthread_t canceller;
    int canceller_started;
} Collector;

static void *cancel_session(void *session) {
    CHECK(tern_session_cancel(session) == TERN_STATUS_OK);
    return NULL;
}

static int32_t collect(void *user_data, uint32_t token_id, const char *text, size_t text_len) {
    (void)token_id;
    Collector *c = user_data;
    CHECK(text != NULL && text[text_len] == '\0');
    if (c->len + text_len < sizeof c->text) {
        memcpy(c->text + c->len, text, text_len);
        c->len += text_len;
        c->text[c->len] = '\0';
    }
    c->tokens++;
    if (c->reenter) {
        CHECK(tern_generate(c->reenter, "x", NULL, NULL, NULL, NULL) == TERN_STATUS_BUSY);
        CHECK(last_error_contains("another thread"));
    }
    if (c->cancel_from_thread && c->tokens == 2) {
        /* Joined here so that the cancel has landed before the next token is produced. */
        pthread_create(&c->canceller, NULL, cancel_session, c->cancel_from_thread);
        pthread_join(c->canceller, NULL);
    }
    return c->stop_after && c->tokens >= c->stop_after;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <model dir>\n", argv[0]);
        return 2;
    }
    TernModel *model = NULL;
    TernSession *session = NULL;

    /* Null and invalid arguments. */
    CHECK(tern_model_open(NULL, &model) == TERN_STATUS_NULL_ARGUMENT);
    CHECK(last_error_contains("model is null"));
    CHECK(tern_model_open(argv[1], NULL) == TERN_STATUS_NULL_ARGUMENT);
    CHECK(tern_model_open("\xff\xfe", &model) == TERN_STATUS_INVALID_ARGUMENT);
    CHECK(model == NULL);
    CHECK(tern_model_open("/no/such/model/dir", &model) == TERN_STATUS_MODEL);
    CHECK(last_error_contains("/no/such/model/dir"));
    CHECK(tern_session_new(NULL, 0, &session) == TERN_STATUS_NULL_ARGUMENT);
    CHECK(tern_generate(NULL, "x", NULL, NULL, NULL, NULL) == TERN_STATUS_NULL_ARGUMENT);
    CHECK(tern_session_cancel(NULL) == TERN_STATUS_NULL_ARGUMENT);
    CHECK(tern_session_reset(NULL) == TERN_STATUS_NULL_ARGUMENT);
    tern_model_free(NULL);
    tern_session_free(NULL);

    CHECK(tern_model_open(argv[1], &model) == TERN_STATUS_OK);
    CHECK(tern_session_new(model, 256, &session) == TERN_STATUS_OK);
    if (!session) return 1;

    TernGenerateOptions options = tern_generate_options_default();
    CHECK(options.max_tokens == 256 && options.temperature == 0.0f && options.top_p == 1.0f);
    options.max_tokens = 8;
    CHECK(tern_generate(session, NULL, &options, NULL, NULL, NULL) == TERN_STATUS_NULL_ARGUMENT);
    CHECK(tern_generate(session, "\xc3\x28", &options, NULL, NULL, NULL) == TERN_STATUS_INVALID_ARGUMENT);
    CHECK(last_error_contains("prompt is not UTF-8"));
    options.stop_count = 1;
    CHECK(tern_generate(session, "Hi", &options, NULL, NULL, NULL) == TERN_STATUS_NULL_ARGUMENT);
    options.stop_count = 0;
    options.temperature = -1.0f / 0.0f;
    CHECK(tern_generate(session, "Hi", &options, NULL, NULL, NULL) == TERN_STATUS_INVALID_ARGUMENT);
    CHECK(last_error_contains("temperature"));
    options.temperature = 0.0f;

    /* Greedy: the same prompt twice (the second from the cache) gives the same text. */
    Collector *first = calloc(1, sizeof *first), *second = calloc(1, sizeof *second);
    TernGeneration generation;
    CHECK(tern_generate(session, "The capital of France is", &options, collect, first, &generation) == TERN_STATUS_OK);
    CHECK(generation.prompt_tokens > 1);
    CHECK(generation.generated_tokens == first->tokens);
    CHECK(generation.stop_reason == TERN_STOP_REASON_MAX_TOKENS || generation.stop_reason == TERN_STOP_REASON_END_OF_SEQUENCE);
    CHECK(tern_session_reset(session) == TERN_STATUS_OK);
    CHECK(tern_generate(session, "The capital of France is", &options, collect, second, NULL) == TERN_STATUS_OK);
    CHECK(strcmp(first->text, second->text) == 0);

    /* Seeded sampling is reproducible. */
    options.temperature = 0.8f;
    options.top_k = 20;
    options.top_p = 0.9f;
    options.use_seed = true;
    options.seed = 7;
    memset(first, 0, sizeof *first);
    memset(second, 0, sizeof *second);
    CHECK(tern_generate(session, "Once upon a time", &options, collect, first, NULL) == TERN_STATUS_OK);
    CHECK(tern_generate(session, "Once upon a time", &options, collect, second, NULL) == TERN_STATUS_OK);
    CHECK(first->tokens > 0 && strcmp(first->text, second->text) == 0);
    options = tern_generate_options_default();
    options.max_tokens = 32;

    /* The callback stops the generation. */
    memset(first, 0, sizeof *first);
    first->stop_after = 3;
    CHECK(tern_generate(session, "Hello", &options, collect, first, &generation) == TERN_STATUS_OK);
    if (generation.stop_reason != TERN_STOP_REASON_END_OF_SEQUENCE) {
        CHECK(generation.stop_reason == TERN_STOP_REASON_CANCELLED);
        CHECK(first->tokens == 3);
    }

    /* Another thread cancels. */
    memset(first, 0, sizeof *first);
    first->cancel_from_thread = session;
    CHECK(tern_generate(session, "Hello there", &options, collect, first, &generation) == TERN_STATUS_OK);
    if (generation.stop_reason != TERN_STOP_REASON_END_OF_SEQUENCE) {
        CHECK(generation.stop_reason == TERN_STOP_REASON_CANCELLED);
        CHECK(first->tokens == 2);
    }

    /* A second generation while one runs is refused (the callback runs inside one). */
    memset(first, 0, sizeof *first);
    first->reenter = session;
    first->stop_after = 1;
    CHECK(tern_generate(session, "Hello", &options, collect, first, NULL) == TERN_STATUS_OK);
    CHECK(first->tokens == 1);

    /* Chat: messages through the template; bad messages are refused. */
    TernMessage messages[2] = {{.role = "system", .content = "Be brief."}, {.role = "user", .content = "Hi"}};
    memset(first, 0, sizeof *first);
    CHECK(tern_chat(session, messages, 2, &options, collect, first, &generation) == TERN_STATUS_OK);
    CHECK(generation.prompt_tokens > 2);
    CHECK(tern_chat(session, NULL, 1, &options, NULL, NULL, NULL) == TERN_STATUS_NULL_ARGUMENT);
    messages[1].content = NULL;
    CHECK(tern_chat(session, messages, 2, &options, NULL, NULL, NULL) == TERN_STATUS_NULL_ARGUMENT);
    CHECK(last_error_contains("messages[1].content"));

    /* A prompt longer than the context. */
    char *long_prompt = malloc(20000);
    for (int i = 0; i < 19999; i++) long_prompt[i] = (i % 2) ? ' ' : 'a';
    long_prompt[19999] = '\0';
    CHECK(tern_generate(session, long_prompt, &options, NULL, NULL, NULL) == TERN_STATUS_CONTEXT_OVERFLOW);
    free(long_prompt);

    tern_session_free(session);
    tern_model_free(model);
    free(first);
    free(second);
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
