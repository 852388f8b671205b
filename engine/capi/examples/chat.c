/* Tern from C: load a model, then complete a prompt (or answer it as a chat message), streaming the
 * text to stdout.
 *
 *   cargo build -p tern-capi
 *   cc engine/capi/examples/chat.c -Iengine/capi/include -Ltarget/debug -ltern \
 *      -Wl,-rpath,$PWD/target/debug -o chat
 *   ./chat tests/fixtures/bitnet-2b4t "The capital of France is" 16          # like `tern run -p … -n 16`
 *   ./chat --chat tests/fixtures/bitnet-2b4t "Hello" 64                       # one chat turn
 *
 * Greedy decoding, so the completion matches `tern run --model M --prompt P --max-tokens N`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern.h"

/* Streams each piece of text as it arrives; returning non-zero would stop the generation. */
static int32_t print_piece(void *user_data, uint32_t token_id, const char *text, size_t text_len) {
    (void)token_id;
    FILE *out = user_data;
    fwrite(text, 1, text_len, out);
    fflush(out);
    return 0;
}

static int fail(const char *what, TernStatus status) {
    const char *message = tern_last_error();
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)status, message ? message : "?");
    return 1;
}

int main(int argc, char **argv) {
    int chat = argc > 1 && strcmp(argv[1], "--chat") == 0;
    if (argc - chat < 3) {
        fprintf(stderr, "usage: %s [--chat] <model dir | .gguf | repo id> <prompt> [max tokens]\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1 + chat];
    const char *prompt = argv[2 + chat];

    TernModel *model = NULL;
    TernStatus status = tern_model_open(model_path, &model);
    if (status != TERN_STATUS_OK) return fail("tern_model_open", status);
    TernSession *session = NULL;
    status = tern_session_new(model, 0, &session);
    tern_model_free(model); /* the session keeps what it needs */
    if (status != TERN_STATUS_OK) return fail("tern_session_new", status);

    TernGenerateOptions options = tern_generate_options_default();
    if (argc - chat > 3) options.max_tokens = (uint32_t)strtoul(argv[3 + chat], NULL, 10);

    TernGeneration generation;
    if (chat) {
        TernMessage message = {.role = "user", .content = prompt};
        status = tern_chat(session, &message, 1, &options, print_piece, stdout, &generation);
    } else {
        status = tern_generate(session, prompt, &options, print_piece, stdout, &generation);
    }
    if (status != TERN_STATUS_OK) {
        tern_session_free(session);
        return fail(chat ? "tern_chat" : "tern_generate", status);
    }
    printf("\n");
    fprintf(stderr, "[%u prompt tokens, %u generated, stop reason %d]\n", generation.prompt_tokens,
            generation.generated_tokens, (int)generation.stop_reason);
    tern_session_free(session);
    return 0;
}
