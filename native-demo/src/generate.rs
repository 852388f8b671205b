//! `tern run` and `tern chat`.

use std::io::{BufRead, Write};

use anyhow::bail;
use tern::generate::{GenerateOptions, SamplingParams, Session, StopReason};
use tern::text::chat_template::ChatMessage;

use crate::load::{session, ModelArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
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
    let generation =
        pollster::block_on(
            session.generate(&prompt, &args.sampling.options(), |event| {
                if !args.print_ids {
                    let _ = write!(stdout, "{}", event.text);
                    let _ = stdout.flush();
                }
            }),
        )?;
    if args.print_ids {
        let ids: Vec<String> = generation.ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", ids.join(","))?;
    } else {
        writeln!(stdout)?;
        report(&generation);
    }
    Ok(())
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
}

/// Interactive chat: each line is a user turn; `/reset` starts over, `/exit` (or end of input) quits.
/// When the conversation outgrows the context, its oldest turns are dropped (the system message
/// stays), with a notice.
pub fn chat(args: &ChatArgs) -> anyhow::Result<()> {
    let mut session: Session = session(&args.model)?;
    let opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect();
    let mut messages = opening.clone();
    eprintln!(
        "chatting with {} — /reset starts over, /exit quits",
        args.model.name()
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = opening.clone();
                session.reset();
                eprintln!("[conversation reset]");
                continue;
            }
            text => messages.push(ChatMessage::new("user", text)),
        }
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
            eprintln!("[context full: the {dropped} oldest turn(s) were dropped]");
        }
        if prompt.len() + 1 > max_context {
            eprintln!(
                "[this message does not fit the {max_context}-token context ({} tokens): send a shorter one]",
                prompt.len()
            );
            messages.pop();
            continue;
        }
        let generation = pollster::block_on(session.generate(&prompt, &options, |event| {
            print!("{}", event.text);
            let _ = std::io::stdout().flush();
        }))?;
        println!();
        if generation.stop_reason == StopReason::ContextFull {
            eprintln!("[the context is full: /reset to start over]");
        }
        messages.push(ChatMessage::new("assistant", generation.text.trim()));
    }
    Ok(())
}
