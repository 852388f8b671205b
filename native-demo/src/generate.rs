//! `tern run` and `tern chat`.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::bail;
use tern::generate::{GenerateOptions, SamplingParams, Session, StopReason};
use tern::text::chat_template::ChatMessage;

use crate::load::{session, ModelArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Tokens to generate at most (0 generates nothing).
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature, 0 or more; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true, value_parser = non_negative)]
    pub temperature: f32,
    /// Sample only among the k likeliest tokens; 0 keeps them all.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: the likeliest tokens whose probabilities sum to this, in (0, 1]; 1 keeps
    /// them all.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = probability)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the likeliest one, in [0, 1]; 0 keeps them all.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true, value_parser = fraction)]
    pub min_p: f32,
    /// Divide the logits of tokens already seen by this (above 1 discourages repeats); 1 is off.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = positive)]
    pub repetition_penalty: f32,
    /// Seed of the random draws (same seed, same text); random without it.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// A finite f32 that `ok` accepts, else the error `rule`.
fn f32_where(s: &str, ok: impl Fn(f32) -> bool, rule: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && ok(v) {
        Ok(v)
    } else {
        Err(format!("{rule} (got {s})"))
    }
}

fn non_negative(s: &str) -> Result<f32, String> {
    f32_where(
        s,
        |v| v >= 0.0,
        "must be 0 or more: negative temperatures are invalid",
    )
}

fn probability(s: &str) -> Result<f32, String> {
    f32_where(s, |v| v > 0.0 && v <= 1.0, "must be in (0, 1]")
}

fn fraction(s: &str) -> Result<f32, String> {
    f32_where(s, |v| (0.0..=1.0).contains(&v), "must be in [0, 1]")
}

fn positive(s: &str) -> Result<f32, String> {
    f32_where(s, |v| v > 0.0, "must be more than 0")
}

impl SamplingArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            ..GenerateOptions::default()
        }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (completed as is; see --chat).
    #[arg(
        long,
        short = 'p',
        conflicts_with = "ids",
        required_unless_present = "ids"
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Wrap the prompt in the chat template as one user message.
    #[arg(long)]
    chat: bool,
    /// Print only the generated token ids, comma-separated, on one line.
    #[arg(long)]
    print_ids: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let mut session = session(&args.model)?;
    let prompt = match (&args.prompt, &args.ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) if args.chat => session
            .model()
            .chat_prompt(&[ChatMessage::new("user", text.as_str())])?,
        (Some(text), None) => session.model().tokenizer().encode(text, true)?,
        (None, None) => bail!("give --prompt or --ids"),
    };
    let mut stdout = std::io::stdout().lock();
    if args.sampling.max_tokens == 0 {
        // Nothing to generate: an empty line (of ids, or of text), as for an empty reply.
        return quiet_if_closed(writeln!(stdout));
    }
    // A closed stdout (`tern run … | head`) stops the generation; the command ends quietly.
    let cancel = session.cancel_handle();
    let mut closed = false;
    let generation =
        pollster::block_on(
            session.generate(&prompt, &args.sampling.options(), |event| {
                if !args.print_ids && !closed {
                    let written = write!(stdout, "{}", event.text).and_then(|()| stdout.flush());
                    if written.is_err() {
                        closed = true;
                        cancel.cancel();
                    }
                }
            }),
        )?;
    if closed {
        return Ok(());
    }
    if args.print_ids {
        let ids: Vec<String> = generation.ids.iter().map(u32::to_string).collect();
        quiet_if_closed(writeln!(stdout, "{}", ids.join(",")))?;
    } else {
        quiet_if_closed(writeln!(stdout))?;
        report(&generation);
    }
    Ok(())
}

/// A write to a closed pipe is the reader having had enough, not an error.
fn quiet_if_closed(written: std::io::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn report(g: &tern::generate::Generation) {
    let decode_tokens = g.ids.len().saturating_sub(1).max(1);
    eprintln!(
        "[{} prompt tokens ({} computed) in {:.2} s, {} tokens at {:.1} tok/s; stop: {:?}]",
        g.prompt_tokens,
        g.prefilled_tokens,
        g.prefill_seconds,
        g.ids.len(),
        decode_tokens as f64 / g.decode_seconds.max(1e-9),
        g.stop_reason
    );
}

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// After each reply, a line of figures: tokens, tokens/s, prompt tokens computed, stop reason
    /// (`/stats` toggles it).
    #[arg(long)]
    stats: bool,
}

/// A bracketed note on stderr, dimmed where stderr is a terminal (`console` honours NO_COLOR and
/// CLICOLOR).
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("{}", console::style(format!("[{}]", format_args!($($arg)*))).dim().for_stderr())
    };
}

const CHAT_HELP: &str = "\
/help           this list
/stats          show or hide the figures of each reply
/system TEXT    set the system prompt and start a new conversation
/reset          start a new conversation (the system prompt stays)
/save FILE      write the conversation to FILE as JSON messages
/load FILE      read a conversation written by /save
/exit           quit (also /quit, Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C during a reply stops the reply.";

/// Where the lines of a chat come from: rustyline (line editing, history) on a terminal, plain
/// lines otherwise.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Plain(std::io::Stdin),
}

impl Input {
    fn new() -> Self {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            if let Ok(editor) = rustyline::DefaultEditor::new() {
                return Input::Editor(Box::new(editor));
            }
        }
        Input::Plain(std::io::stdin())
    }

    /// The next line, or None at the end of input (Ctrl-D) or on Ctrl-C at the prompt.
    fn line(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Input::Editor(editor) => match editor.readline("> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Ok(Some(line))
                }
                Err(rustyline::error::ReadlineError::Eof)
                | Err(rustyline::error::ReadlineError::Interrupted) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Input::Plain(stdin) => {
                let mut stdout = std::io::stdout();
                write!(stdout, "> ")?;
                stdout.flush()?;
                let mut line = String::new();
                Ok((stdin.lock().read_line(&mut line)? > 0).then_some(line))
            }
        }
    }
}

/// What Ctrl-C does: stops the reply while one is being generated (the reply's token callback
/// sees the flag and cancels, so a Ctrl-C just before the generation starts counts too), quits at
/// the prompt.
struct Interrupts {
    replying: Arc<AtomicBool>,
    interrupted: Arc<AtomicBool>,
}

impl Interrupts {
    fn install() -> Self {
        let replying = Arc::new(AtomicBool::new(false));
        let interrupted = Arc::new(AtomicBool::new(false));
        let (r, i) = (replying.clone(), interrupted.clone());
        let installed = ctrlc::set_handler(move || {
            if r.load(Ordering::SeqCst) {
                i.store(true, Ordering::SeqCst);
            } else {
                // At the prompt (plain input; rustyline reads Ctrl-C as a key): quit.
                eprintln!();
                std::process::exit(0);
            }
        });
        if let Err(e) = installed {
            note!("Ctrl-C cannot stop a reply here: {e}");
        }
        Interrupts {
            replying,
            interrupted,
        }
    }

    fn start_reply(&self) {
        self.interrupted.store(false, Ordering::SeqCst);
        self.replying.store(true, Ordering::SeqCst);
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Ends the reply; whether Ctrl-C stopped it.
    fn end_reply(&self) -> bool {
        self.replying.store(false, Ordering::SeqCst);
        self.interrupted()
    }
}

/// The one line a chat opens with: model, adapter, context.
fn banner(args: &ChatArgs, session: &Session) {
    let ctx = session.model().transformer().context();
    let used = session.max_context();
    let context = if used < args.model.context() {
        format!(
            "context {used} (the model's maximum; --context {} asked)",
            args.model.context()
        )
    } else {
        format!("context {used}")
    };
    eprintln!(
        "{} on {}, {context} — /help lists the commands",
        args.model.name(),
        ctx.adapter_name()
    );
    if ctx.caps.is_cpu {
        eprintln!("warning: {} is a CPU fallback, not a GPU: expect slow replies (TERN_ADAPTER picks another adapter; `tern info` lists them)", ctx.adapter_name());
    }
}

/// Interactive chat: each line is a user turn; `/help` lists the commands. When the conversation
/// outgrows the context, its oldest turns are dropped (the system message stays), with a notice.
pub fn chat(args: &ChatArgs) -> anyhow::Result<()> {
    let mut session: Session = session(&args.model)?;
    let mut opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect();
    let mut messages = opening.clone();
    banner(args, &session);
    let interrupts = Interrupts::install();
    let cancel = session.cancel_handle();
    let mut input = Input::new();
    let mut stats = args.stats;
    while let Some(line) = input.line()? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(command) = line.strip_prefix('/') {
            let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
            let rest = rest.trim();
            match name {
                "exit" | "quit" => break,
                "help" => eprintln!("{CHAT_HELP}"),
                "stats" => {
                    stats = !stats;
                    note!("reply figures {}", if stats { "on" } else { "off" });
                }
                "reset" => {
                    messages = opening.clone();
                    session.reset();
                    note!("conversation reset");
                }
                "system" if !rest.is_empty() => {
                    opening = vec![ChatMessage::new("system", rest)];
                    messages = opening.clone();
                    session.reset();
                    note!("system prompt set; conversation reset");
                }
                "save" if !rest.is_empty() => match serde_json::to_string_pretty(&messages)
                    .map_err(anyhow::Error::from)
                    .and_then(|json| Ok(std::fs::write(rest, json + "\n")?))
                {
                    Ok(()) => note!("{} messages saved to {rest}", messages.len()),
                    Err(e) => note!("cannot save to {rest}: {e}"),
                },
                "load" if !rest.is_empty() => match load_conversation(rest) {
                    Ok(loaded) => {
                        opening = loaded
                            .iter()
                            .take_while(|m| m.role == "system")
                            .cloned()
                            .collect();
                        messages = loaded;
                        session.reset();
                        note!("{} messages loaded from {rest}", messages.len());
                    }
                    Err(e) => note!("cannot load {rest}: {e:#}"),
                },
                "system" | "save" | "load" => {
                    note!("/{name} needs an argument: /help lists the commands")
                }
                _ => note!("unknown command /{name}: /help lists the commands"),
            }
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let options = args.sampling.options();
        let max_context = session.max_context();
        // Room for the reply: its whole budget when that is small, else a quarter of the context.
        let reply_room = options.max_new_tokens.min(max_context / 4);
        let mut prompt = session.model().chat_prompt(&messages)?;
        let mut dropped = 0;
        while prompt.len() + reply_room > max_context && messages.len() > opening.len() + 1 {
            // The oldest exchange after the opening goes; the system message and this turn stay.
            let end = (opening.len() + 2).min(messages.len() - 1);
            messages.drain(opening.len()..end);
            prompt = session.model().chat_prompt(&messages)?;
            dropped += 1;
        }
        if dropped > 0 {
            note!("context full: the {dropped} oldest turn(s) were dropped");
        }
        if prompt.len() + 1 > max_context {
            note!(
                "this message does not fit the {max_context}-token context ({} tokens): send a shorter one",
                prompt.len()
            );
            messages.pop();
            continue;
        }
        if options.max_new_tokens == 0 {
            // -n 0: no reply at all.
            println!();
            messages.push(ChatMessage::new("assistant", ""));
            continue;
        }
        interrupts.start_reply();
        let generation = pollster::block_on(session.generate(&prompt, &options, |event| {
            print!("{}", event.text);
            let _ = std::io::stdout().flush();
            if interrupts.interrupted() {
                cancel.cancel();
            }
        }));
        let stopped = interrupts.end_reply();
        let generation = generation?;
        println!();
        if stopped || generation.stop_reason == StopReason::Cancelled {
            note!("reply stopped");
        }
        if generation.stop_reason == StopReason::ContextFull {
            note!("the context is full: /reset to start over");
        }
        if stats {
            note!("{}", reply_figures(&generation));
        }
        messages.push(ChatMessage::new("assistant", generation.text.trim()));
    }
    Ok(())
}

/// One line about a reply: its tokens and speed, the prompt tokens computed (the rest came from
/// the KV cache) and why it stopped.
fn reply_figures(g: &tern::Generation) -> String {
    let speed = match g.decode_seconds > 0.0 && g.ids.len() > 1 {
        true => format!(", {:.1} tok/s", (g.ids.len() - 1) as f64 / g.decode_seconds),
        false => String::new(),
    };
    format!(
        "{} tokens in {:.2} s{speed} · prompt {} tokens, {} computed in {:.2} s · stop: {:?}",
        g.ids.len(),
        g.decode_seconds,
        g.prompt_tokens,
        g.prefilled_tokens,
        g.prefill_seconds,
        g.stop_reason
    )
}

/// A conversation written by `/save`: a JSON array of `{"role", "content"}` messages.
fn load_conversation(path: &str) -> anyhow::Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path)?;
    let messages: Vec<ChatMessage> = serde_json::from_str(&text)?;
    if let Some(m) = messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        bail!("unknown role {:?}", m.role);
    }
    Ok(messages)
}
