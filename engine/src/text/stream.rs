//! Streaming text out of generated tokens: incremental detokenization and stop strings.

use crate::text::tokenizer::Tokenizer;
use crate::Result;

/// Turns token ids, fed one at a time, into text pieces.
///
/// Decoding token by token is wrong twice over: byte-level BPE splits multi-byte characters
/// across tokens, and decoders that strip a leading space or clean up spacing give a different
/// text for a token alone than in context. So the streamer decodes a small window that starts
/// one emitted chunk back, and emits only what the window adds past that chunk, and only once
/// it does not end in an incomplete character (U+FFFD).
#[derive(Debug)]
pub struct TextStreamer {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    /// The decode window: ids since the start of the previously emitted chunk.
    ids: Vec<u32>,
    /// `ids[..read]` is emitted; `ids[..read]` decoded alone is the context for the rest.
    read: usize,
}

impl TextStreamer {
    /// `skip_special_tokens` drops control tokens (`<|eot_id|>`) from the text.
    pub fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> Self {
        TextStreamer {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// Adds one token and returns the text it completes (often empty: a partial character, a
    /// skipped special token).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.decode(&self.ids[..self.read])?;
        let full = self.decode(&self.ids)?;
        if full.len() <= prefix.len() || full.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        let piece = new_suffix(&prefix, &full).to_owned();
        // Slide the window: the chunk just emitted becomes the context of the next one.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(piece)
    }

    /// Returns what is still held back (an incomplete character comes out as U+FFFD) and
    /// starts over.
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.decode(&self.ids[..self.read])?;
        let full = self.decode(&self.ids)?;
        self.ids.clear();
        self.read = 0;
        Ok(new_suffix(&prefix, &full).to_owned())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        if ids.is_empty() {
            return Ok(String::new());
        }
        self.tokenizer.decode(ids, self.skip_special_tokens)
    }
}

/// The part of `full` past `prefix`. When decoding in context changed the prefix itself (text
/// already emitted cannot be taken back) it is the part past their common prefix.
fn new_suffix<'a>(prefix: &str, full: &'a str) -> &'a str {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest;
    }
    let common = prefix
        .char_indices()
        .zip(full.chars())
        .take_while(|((_, a), b)| a == b)
        .count();
    let at = full
        .char_indices()
        .nth(common)
        .map_or(full.len(), |(i, _)| i);
    &full[at..]
}

/// Holds back streamed text that may be the start of a stop string, and stops at the first one.
///
/// Feed it every piece in order; it returns the text that is safe to show. When a stop string
/// completes, the text before it is returned, [`StopMatcher::stopped`] names the stop string, and
/// the stop string and everything after it are dropped. At the end of generation without a stop,
/// [`StopMatcher::flush`] returns the held-back tail.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        StopMatcher {
            stops,
            held: String::new(),
            stopped: None,
        }
    }

    /// Adds a piece of text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        self.held.push_str(text);
        // The earliest match wins; at equal starts, the first stop string listed.
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = hit {
            self.stopped = Some(i);
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        // Keep the longest tail that a stop string starts with. Its first byte is the first byte
        // of a stop string, a character start, so the cut is on a character boundary.
        let tail = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&k| self.held.as_bytes().ends_with(&s.as_bytes()[..k]))
            })
            .max()
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - tail);
        std::mem::replace(&mut self.held, rest)
    }

    /// The stop string that ended generation, if any.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.map(|i| self.stops[i].as_str())
    }

    /// The held-back text, at the end of generation when no stop string completed.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Tokenizer {
        Tokenizer::from_json(
            "tokenizer.json",
            include_str!("../../../tests/fixtures/tokenizer/tokenizer.json"),
        )
        .unwrap()
    }

    fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
        let mut s = TextStreamer::new(tok.clone(), skip);
        let mut pieces: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
        pieces.push(s.finish().unwrap());
        pieces
    }

    #[test]
    fn streamed_text_equals_decoded_text() {
        let tok = fixture();
        let text = "Hello wörld! 世界 🙂🚀 naïve — “quotes” end";
        let ids = tok.encode(text, false).unwrap();
        // The small vocabulary spells these characters byte by byte: several tokens each.
        assert!(ids.len() > text.chars().count());
        let pieces = stream(&tok, &ids, false);
        assert_eq!(pieces.concat(), text);
        assert!(pieces
            .iter()
            .all(|p| !p.contains(char::REPLACEMENT_CHARACTER)));
        assert!(
            pieces[..ids.len()].iter().any(|p| p.is_empty()),
            "some token ends mid-character"
        );
        assert_eq!(pieces.last().unwrap(), "", "nothing left over");
    }

    #[test]
    fn special_tokens_are_skipped_or_kept() {
        let tok = fixture();
        let ids = tok.encode("Hi<|eot_id|> there", false).unwrap();
        assert_eq!(stream(&tok, &ids, true).concat(), "Hi there");
        assert_eq!(stream(&tok, &ids, false).concat(), "Hi<|eot_id|> there");
    }

    #[test]
    fn incomplete_character_is_held_then_flushed() {
        let tok = fixture();
        let ids = tok.encode("a世", false).unwrap();
        let mut s = TextStreamer::new(tok.clone(), true);
        let mut out = String::new();
        for &id in &ids[..ids.len() - 1] {
            out += &s.push(id).unwrap();
        }
        assert_eq!(out, "a");
        assert_eq!(s.finish().unwrap(), "\u{FFFD}");
        // finish() starts over.
        assert_eq!(stream(&tok, &ids, true).concat(), "a世");
    }

    #[test]
    fn new_suffix_survives_an_unstable_prefix() {
        assert_eq!(new_suffix("ab", "abc"), "c");
        assert_eq!(new_suffix("a\u{FFFD}", "aé!"), "é!");
        assert_eq!(new_suffix("xyz", "ab"), "ab");
        assert_eq!(new_suffix("aé", "aéz"), "z");
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, Option<String>, String) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let out = pieces.iter().map(|p| m.push(p)).collect();
        let stopped = m.stopped().map(str::to_owned);
        (out, stopped, m.flush())
    }

    #[test]
    fn stop_string_split_across_pieces() {
        let (out, stopped, rest) = run(&["</s>", "User:"], &["Hello <", "/", "s> more", "ignored"]);
        assert_eq!(out, ["Hello ", "", "", ""]);
        assert_eq!(stopped.as_deref(), Some("</s>"));
        assert_eq!(rest, "");
    }

    #[test]
    fn false_start_is_released() {
        let (out, stopped, rest) = run(&["</s>"], &["a <", "b", "</", "x", "<"]);
        assert_eq!(out, ["a ", "<b", "", "</x", ""]);
        assert_eq!(stopped, None);
        assert_eq!(rest, "<");
    }

    #[test]
    fn earliest_stop_wins_and_text_before_it_is_kept() {
        let (out, stopped, _) = run(&["</s>", "User:"], &["yes User: no </s>"]);
        assert_eq!(out, ["yes "]);
        assert_eq!(stopped.as_deref(), Some("User:"));
        // A complete short stop inside a partial longer one stops at once.
        let (out, stopped, _) = run(&["abc", "b"], &["ab", "c"]);
        assert_eq!(out, ["a", ""]);
        assert_eq!(stopped.as_deref(), Some("b"));
    }

    #[test]
    fn multibyte_stop_strings() {
        let (out, stopped, _) = run(&["世界"], &["hi 世", "界 bye"]);
        assert_eq!(out, ["hi ", ""]);
        assert_eq!(stopped.as_deref(), Some("世界"));
        let (out, stopped, rest) = run(&["世界", ""], &["x世", "y"]);
        assert_eq!(out, ["x", "世y"]);
        assert_eq!((stopped, rest), (None, String::new()));
    }
}
