//! `-v` and `-q`: how much of the library's log (its `tracing` events: a broker being retried,
//! a malformed entry sent to the dead letters, …) reaches standard error.
//!
//! The subscriber is installed here, in the binary, never in the library: a program using the
//! library decides where its log goes.

use std::fmt;

use clap::{ArgAction, Args};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The `-v` and `-q` of every subcommand but `run` (whose `-v` and `-q` are GNU parallel's:
/// print the command, quote it).
///
/// They are `global` only below the subcommand they are flattened into (so that `multiproc
/// dead ls -q` works as `multiproc dead -q ls` does), never on `multiproc` itself, which would
/// reach `run` too.
#[derive(Debug, Clone, Copy, Default, Args)]
pub(crate) struct Verbosity {
    /// Show more of the log on standard error: -v adds information, -vv debugging, -vvv
    /// everything (by default warnings and errors; RUST_LOG, when set, decides instead).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Show less of the log: -q errors only, -qq nothing (the command's own error messages
    /// are still printed).
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count, global = true)]
    quiet: u8,
}

impl Verbosity {
    /// The most detailed level shown: warnings by default, one step per `-v` or `-q` (a `-v`
    /// and a `-q` cancel out).
    pub(crate) fn level(&self) -> LevelFilter {
        match 2 + i16::from(self.verbose) - i16::from(self.quiet) {
            ..=0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        }
    }
}

/// Sends the log to standard error: the events at `level` and above, or those `RUST_LOG`
/// chooses when it is set (an `EnvFilter` directive such as `multiproc=debug`).
pub(crate) fn init(level: LevelFilter) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::builder().parse(&spec) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("multiproc: warning: RUST_LOG ignored: {e}");
                EnvFilter::default().add_directive(level.into())
            }
        },
        _ => EnvFilter::default().add_directive(level.into()),
    };
    // Fails only if a subscriber is already installed, which `main` does not do twice.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(Plain)
        .with_writer(std::io::stderr)
        .try_init();
}

/// One line per event, as the command's own messages read: `multiproc: warning: broker
/// unreachable; retrying queue=task error=…`.
///
/// Not tracing-subscriber's default format: its timestamps, padded levels and module paths
/// suit a service's log file, while here a person reads a few lines on a terminal, among the
/// command's other `multiproc: …` messages. The module path (the event's target) is kept for
/// debug and trace events, which are for finding where something happened; spans, should the
/// library open any, come before the message as `span{fields}: `. No colours: the lines also
/// go to files and pipes as they are.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let level = *meta.level();
        write!(writer, "multiproc: {}: ", level_word(level))?;
        if level >= Level::DEBUG {
            write!(writer, "{}: ", meta.target())?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// How a level is named in a line: `warning`, as compilers and most Unix tools say.
fn level_word(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        _ => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level for `-v` given `verbose` times and `-q` given `quiet` times.
    fn level(verbose: u8, quiet: u8) -> LevelFilter {
        Verbosity { verbose, quiet }.level()
    }

    #[test]
    fn each_v_and_q_moves_one_level_from_warnings() {
        assert_eq!(level(0, 0), LevelFilter::WARN);
        assert_eq!(level(1, 0), LevelFilter::INFO);
        assert_eq!(level(2, 0), LevelFilter::DEBUG);
        assert_eq!(level(3, 0), LevelFilter::TRACE);
        assert_eq!(level(200, 0), LevelFilter::TRACE);
        assert_eq!(level(0, 1), LevelFilter::ERROR);
        assert_eq!(level(0, 2), LevelFilter::OFF);
        assert_eq!(level(0, 255), LevelFilter::OFF);
        assert_eq!(level(1, 1), LevelFilter::WARN);
    }
}
