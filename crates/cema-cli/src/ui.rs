//! Progress bars and status lines on stderr, shared by the subcommands.
//!
//! Bars draw only when stderr is a terminal (and not with `--quiet`); status lines then print
//! above the bar. Without a terminal, status lines go to stderr as plain lines, so logs of
//! non-interactive runs still show progress.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar plus the rule for printing status lines next to it.
pub struct Progress {
    bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    /// A bar over `len` items of `unit` (e.g. "img"), showing rate and ETA.
    pub fn new(len: u64, unit: &str, quiet: bool) -> Progress {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        let template = format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} \
             {{per_sec}} ETA {{eta}} {{msg}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar, quiet }
    }

    /// Counts `n` items done; cheap enough to call once per item from worker threads.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the text shown after the bar.
    pub fn set_message(&self, msg: impl Into<std::borrow::Cow<'static, str>>) {
        self.bar.set_message(msg);
    }

    /// A status line: above the bar on a terminal, a plain stderr line otherwise, nothing if quiet.
    pub fn note(&self, line: impl AsRef<str>) {
        if self.quiet {
        } else if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
