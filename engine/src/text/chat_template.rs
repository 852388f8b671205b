//! Hugging Face chat templates rendered with minijinja, configured as transformers configures
//! jinja2: `trim_blocks` and `lstrip_blocks` on, no autoescape, `raise_exception(msg)`, a
//! `tojson` that writes what Python's `json.dumps(x, ensure_ascii=False)` writes (not jinja2's
//! HTML-escaping one), and Python string/dict/list methods (`.strip()`, `.startswith()`,
//! `.items()`, …) through minijinja-contrib's pycompat.
//!
//! Not provided: `strftime_now` (templates that use it test `is defined` and fall back to a
//! fixed date), so renders are reproducible and need no clock (there is none on wasm32).

use std::io::Write;
use std::ops::Range;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};

/// LLaMA-3-instruct turns: `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`.
pub const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// ChatML turns: `<|im_start|>role\ncontent<|im_end|>\n`.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// For vocabularies without turn markers: `Role: content` lines after the BOS.
pub const PLAIN_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize + ': ' + message['content'] | trim + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

/// One turn of a conversation, as chat templates see it (`message['role']`, `message['content']`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user` or `assistant`.
    pub role: String,
    /// What was said, as plain text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A rendered prompt, as [`ChatTemplate::prompt_ids`] tokenizes it: templates that write
/// `bos_token` themselves (2B-4T's HF template) must not get a second one from the tokenizer,
/// templates that do not (its GGUF template) need the tokenizer's; and control-token text a user
/// typed (`<|eot_id|>` inside a message) must stay text, or a user could forge a turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedPrompt {
    /// The template's output.
    pub text: String,
    /// Whether `text` already begins with the BOS token's text, so the tokenizer must not add one.
    pub starts_with_bos: bool,
    /// For each message, the byte range of `text` that is its content (`None` when the
    /// template rewrote the content or it is empty).
    pub content_spans: Vec<Option<Range<usize>>>,
}

/// A compiled chat template.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

const NAME: &str = "chat";

/// Instructions one render may execute. Real templates over long conversations use well under a
/// million; a template that loops without end (nested `range(100000)`) stops here.
const RENDER_FUEL: u64 = 20_000_000;

/// The most text one render may produce. A prompt that fits any context window is far smaller.
pub const MAX_RENDERED_BYTES: usize = 32 << 20;

impl ChatTemplate {
    /// Compiles `source` (the `chat_template` of `tokenizer_config.json` or GGUF
    /// `tokenizer.chat_template`).
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(RENDER_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(template_error)?;
        Ok(ChatTemplate { env })
    }

    /// The template to use when a model ships none, chosen by the vocabulary's markers:
    /// [`LLAMA3_TEMPLATE`] if it has `<|start_header_id|>`, [`CHATML_TEMPLATE`] if it has
    /// `<|im_start|>`, [`PLAIN_TEMPLATE`] otherwise.
    pub fn fallback_for(tokenizer: &Tokenizer) -> Self {
        let source = if tokenizer.token_to_id("<|start_header_id|>").is_some() {
            LLAMA3_TEMPLATE
        } else if tokenizer.token_to_id("<|im_start|>").is_some() {
            CHATML_TEMPLATE
        } else {
            PLAIN_TEMPLATE
        };
        ChatTemplate::new(source).expect("built-in templates compile")
    }

    /// Renders the conversation. `add_generation_prompt` appends the opening of the assistant's
    /// turn. `bos_token`/`eos_token` are the token texts (empty when the vocabulary has none).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<RenderedPrompt> {
        let template = self.env.get_template(NAME).map_err(template_error)?;
        let mut out = BoundedWriter::default();
        template
            .render_captured_to(
                minijinja::context! { messages, add_generation_prompt, bos_token, eos_token },
                &mut out,
            )
            .map_err(|e| match e.kind() {
                ErrorKind::WriteFailure => Error::Template(format!(
                    "the chat template wrote more than {} MiB: refusing a template that grows \
                     without bound",
                    MAX_RENDERED_BYTES >> 20
                )),
                ErrorKind::OutOfFuel => Error::Template(format!(
                    "the chat template ran more than {RENDER_FUEL} instructions: refusing a \
                     template that loops without bound"
                )),
                _ => template_error(e),
            })?;
        let text = String::from_utf8(out.bytes)
            .map_err(|_| Error::Template("the chat template wrote invalid UTF-8".into()))?;
        let starts_with_bos = !bos_token.is_empty() && text.starts_with(bos_token);
        let content_spans = locate_contents(&text, messages);
        Ok(RenderedPrompt {
            text,
            starts_with_bos,
            content_spans,
        })
    }
}

impl ChatTemplate {
    /// The token ids of a chat prompt: the conversation rendered with a generation prompt, BOS
    /// added only when the template does not write it, and control-token text inside a message
    /// (`<|eot_id|>` typed by a user) kept as text so no one can forge a turn.
    pub fn prompt_ids(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let bos = tokenizer.bos_token().unwrap_or_default();
        let eos = tokenizer.eos_token().unwrap_or_default();
        let rendered = self.render(messages, true, &bos, &eos)?;
        for (index, (message, span)) in messages.iter().zip(&rendered.content_spans).enumerate() {
            if span.is_none() && tokenizer.contains_special_text(&message.content) {
                return Err(Error::Template(format!(
                    "message {index} holds control-token text (such as <|eot_id|>) and the chat \
                     template rewrites its content, so it cannot be kept as plain text"
                )));
            }
        }
        let literal: Vec<_> = rendered.content_spans.into_iter().flatten().collect();
        tokenizer.encode_with_literal_spans(&rendered.text, &literal, !rendered.starts_with_bos)
    }
}

/// Where each message's content landed in the rendered text, searched in order (templates
/// commonly trim it). A content the template rewrote is not found.
fn locate_contents(text: &str, messages: &[ChatMessage]) -> Vec<Option<Range<usize>>> {
    let mut cursor = 0;
    messages
        .iter()
        .map(|message| {
            let needle = message.content.trim();
            let start = cursor + text[cursor..].find(needle).filter(|_| !needle.is_empty())?;
            cursor = start + needle.len();
            Some(start..cursor)
        })
        .collect()
}

/// Collects the render, failing once it exceeds [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct BoundedWriter {
    bytes: Vec<u8>,
}

impl Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn template_error(e: minijinja::Error) -> Error {
    // `raise_exception` messages are the template author's words: show them as they are.
    if e.kind() == ErrorKind::InvalidOperation {
        if let Some(msg) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
            return Error::Template(msg.to_owned());
        }
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Template(msg)
}

const RAISED: &str = "raised: ";

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators is a pair",
            ))
        }
        // Python drops the space after ',' when indenting (it would trail each line).
        None => (
            if indent.is_some() { "," } else { ", " }.to_owned(),
            ": ".to_owned(),
        ),
    };
    let style = JsonStyle {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    style.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
    item_sep: String,
    key_sep: String,
}

impl JsonStyle {
    fn write(
        &self,
        v: &Value,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
            ValueKind::Number => out.push_str(&python_float(f64::try_from(v.clone())?)),
            ValueKind::String => self.write_str(v.as_str().unwrap_or_default(), out),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let mut items = Vec::with_capacity(keys.len());
                for key in keys {
                    let mut item = String::new();
                    // Python turns non-string keys into their JSON scalar text.
                    match key.as_str() {
                        Some(k) => self.write_str(k, &mut item),
                        None => self.write_str(&key.to_string(), &mut item),
                    }
                    item.push_str(&self.key_sep);
                    self.write(&v.get_item(&key)?, depth + 1, &mut item)?;
                    items.push(item);
                }
                self.write_container('{', '}', items, depth, out);
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let mut items = Vec::new();
                for item in v.try_iter()? {
                    let mut s = String::new();
                    self.write(&item, depth + 1, &mut s)?;
                    items.push(s);
                }
                self.write_container('[', ']', items, depth, out);
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a {}", v.kind()),
                ))
            }
        }
        Ok(())
    }

    fn write_container(
        &self,
        open: char,
        close: char,
        items: Vec<String>,
        depth: usize,
        out: &mut String,
    ) {
        out.push(open);
        if !items.is_empty() {
            match self.indent {
                None => out.push_str(&items.join(&self.item_sep)),
                Some(n) => {
                    let inner = format!("\n{}", " ".repeat(n * (depth + 1)));
                    out.push_str(&inner);
                    out.push_str(&items.join(&format!("{}{inner}", self.item_sep)));
                    out.push('\n');
                    out.push_str(&" ".repeat(n * depth));
                }
            }
        }
        out.push(close);
    }

    fn write_str(&self, s: &str, out: &mut String) {
        // serde_json escapes exactly what Python does with ensure_ascii=False.
        let quoted = serde_json::to_string(s).expect("strings serialize");
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            // Python escapes everything outside ' '..='~' here, DEL included.
            if c.is_ascii() && c != '\x7f' {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

/// Python's `repr(float)` as `json.dumps` writes it: shortest round-trip digits, exponent form
/// below 1e-4 and from 1e16 on.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if f == 0.0 || (-4..16).contains(&exp) {
        let plain = f.to_string();
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    const GOLDENS: &str = include_str!("../../../tests/reference/goldens/chat_templates.json");

    fn goldens() -> Json {
        serde_json::from_str(GOLDENS).unwrap()
    }

    #[test]
    fn matches_jinja2_goldens() {
        let g = goldens();
        let cases = g["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let name = case["template"].as_str().unwrap();
            let template = ChatTemplate::new(g["templates"][name].as_str().unwrap()).unwrap();
            let messages: Vec<ChatMessage> =
                serde_json::from_value(g["messages"][case["messages"].as_str().unwrap()].clone())
                    .unwrap();
            let bos = case["bos_token"].as_str().unwrap();
            let got = template.render(
                &messages,
                case["add_generation_prompt"].as_bool().unwrap(),
                bos,
                case["eos_token"].as_str().unwrap(),
            );
            match (&case["output"], &case["error"]) {
                (Json::String(want), _) => {
                    let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(&got.text, want, "{name} / {}", case["messages"]);
                    assert_eq!(got.starts_with_bos, want.starts_with(bos));
                }
                (_, Json::String(want)) => match got {
                    Err(Error::Template(msg)) => assert_eq!(&msg, want),
                    other => panic!("{name}: expected the template's exception, got {other:?}"),
                },
                _ => panic!("golden case without output or error"),
            }
        }
    }

    #[test]
    fn built_in_templates_are_the_golden_ones() {
        let g = goldens();
        assert_eq!(g["templates"]["llama3"], LLAMA3_TEMPLATE);
        assert_eq!(g["templates"]["chatml"], CHATML_TEMPLATE);
        assert_eq!(g["templates"]["plain"], PLAIN_TEMPLATE);
    }

    #[test]
    fn bos_is_reported_only_when_the_template_writes_it() {
        let g = goldens();
        let msgs = [ChatMessage::new("user", "Hi")];
        let with = ChatTemplate::new(g["templates"]["bitnet_2b4t"].as_str().unwrap()).unwrap();
        let without =
            ChatTemplate::new(g["templates"]["bitnet_2b4t_no_bos"].as_str().unwrap()).unwrap();
        let p = with
            .render(&msgs, true, "<|begin_of_text|>", "<|eot_id|>")
            .unwrap();
        assert_eq!(p.text, "<|begin_of_text|>User: Hi<|eot_id|>Assistant: ");
        assert!(p.starts_with_bos);
        let p = without
            .render(&msgs, true, "<|begin_of_text|>", "<|eot_id|>")
            .unwrap();
        assert_eq!(p.text, "User: Hi<|eot_id|>Assistant: ");
        assert!(!p.starts_with_bos);
        // No BOS token at all: nothing to double.
        assert!(!with.render(&msgs, true, "", "").unwrap().starts_with_bos);
    }

    #[test]
    fn fallback_follows_the_vocabulary() {
        let json = include_str!("../../../tests/fixtures/tokenizer/tokenizer.json");
        let tok = Tokenizer::from_json("tokenizer.json", json).unwrap();
        let t = ChatTemplate::fallback_for(&tok);
        let p = t
            .render(
                &[ChatMessage::new("user", "Hi")],
                true,
                "<|begin_of_text|>",
                "",
            )
            .unwrap();
        assert_eq!(
            p.text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn errors_are_template_errors() {
        assert!(matches!(
            ChatTemplate::new("{% for x in %}"),
            Err(Error::Template(_))
        ));
        let t = ChatTemplate::new("{{ messages[0].content | tojson(bogus=1) }}").unwrap();
        assert!(matches!(
            t.render(&[ChatMessage::new("user", "x")], false, "", ""),
            Err(Error::Template(_))
        ));
    }

    #[test]
    fn tojson_writes_what_python_writes() {
        let t = ChatTemplate::new(
            "{{ [0.0, 1.0, -2.5, 1e-05, 0.0001, 1e16, 123456789.125] | tojson }}|\
             {{ 'é\u{7f}<>&\\'' | tojson }}|{{ 'é😀' | tojson(ensure_ascii=true) }}|\
             {{ [1, [2]] | tojson(separators=[',', ':']) }}|{{ [] | tojson(indent=2) }}",
        )
        .unwrap();
        let out = t.render(&[], false, "", "").unwrap().text;
        // json.dumps([0.0, 1.0, -2.5, 1e-05, 0.0001, 1e16, 123456789.125]) and friends.
        assert_eq!(
            out,
            "[0.0, 1.0, -2.5, 1e-05, 0.0001, 1e+16, 123456789.125]|\"é\u{7f}<>&'\"|\
             \"\\u00e9\\ud83d\\ude00\"|[1,[2]]|[]"
        );
    }

    #[test]
    fn runaway_templates_stop_with_a_clear_error() {
        let msgs = [ChatMessage::new("user", "x")];
        let endless = ChatTemplate::new(
            "{% for i in range(50000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}",
        )
        .unwrap();
        match endless.render(&msgs, false, "", "") {
            Err(Error::Template(msg)) => assert!(msg.contains("loops without bound"), "{msg}"),
            other => panic!("expected the fuel to run out, got {other:?}"),
        }
        // Output that doubles each round stops at the size limit, long before memory runs out.
        let doubling = ChatTemplate::new(
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}\
             {% set ns.s = ns.s ~ ns.s %}{{ ns.s }}{% endfor %}",
        )
        .unwrap();
        match doubling.render(&msgs, false, "", "") {
            Err(Error::Template(msg)) => assert!(msg.contains("grows without bound"), "{msg}"),
            other => panic!("expected the size limit, got {other:?}"),
        }
    }

    #[test]
    fn content_spans_locate_each_message() {
        let msgs = [
            ChatMessage::new("system", "  Be brief. "),
            ChatMessage::new("user", "Be brief."),
            ChatMessage::new("assistant", ""),
        ];
        let p = ChatTemplate::new(CHATML_TEMPLATE)
            .unwrap()
            .render(&msgs, true, "", "")
            .unwrap();
        let spans = &p.content_spans;
        assert_eq!(spans.len(), 3);
        let first = spans[0].clone().unwrap();
        let second = spans[1].clone().unwrap();
        assert_eq!(
            (&p.text[first.clone()], &p.text[second.clone()]),
            ("Be brief.", "Be brief.")
        );
        assert!(first.end <= second.start);
        assert_eq!(spans[2], None);
        // A content the template rewrites is not claimed.
        let upper = ChatTemplate::new("{% for m in messages %}{{ m.content | upper }}{% endfor %}")
            .unwrap()
            .render(&msgs[1..2], false, "", "")
            .unwrap();
        assert_eq!(upper.content_spans, vec![None]);
    }
}
