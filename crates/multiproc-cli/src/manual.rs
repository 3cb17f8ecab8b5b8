//! `multiproc completions` and `multiproc man`: what shells and `man` read about the command
//! line, made from the same definitions as its `--help` (so they never fall behind).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

/// `multiproc completions`.
#[derive(Debug, Args)]
pub(crate) struct Completions {
    /// The shell whose script to print.
    shell: Shell,
}

/// `multiproc man`.
#[derive(Debug, Args)]
pub(crate) struct Man {
    /// Write the pages into this directory instead (made if missing): multiproc.1 and one per
    /// subcommand, multiproc-run.1, multiproc-dead-ls.1, …
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script of `cli` (the whole command line) for `args.shell`.
pub(crate) fn completions(args: Completions, mut cli: clap::Command) -> anyhow::Result<()> {
    let mut script = Vec::new();
    // Into memory first: the generators panic on a failed write, such as a closed pipe.
    clap_complete::generate(args.shell, &mut cli, "multiproc", &mut script);
    print(&script)
}

/// Prints the man page of `cli`, or writes it and its subcommands' pages into `args.dir`.
pub(crate) fn man(args: Man, cli: clap::Command) -> anyhow::Result<()> {
    // No `help` subcommand, as clap_mangen's `generate_to` does: `--help` is in every page.
    let mut cli = cli.disable_help_subcommand(true);
    if let Some(dir) = args.dir {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot make the directory {}", dir.display()))?;
        return clap_mangen::generate_to(cli, &dir)
            .with_context(|| format!("cannot write the man pages into {}", dir.display()));
    }
    // Built, so that the SUBCOMMANDS section names the pages (`multiproc-run(1)`).
    cli.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(cli)
        .render(&mut page)
        .context("cannot render the man page")?;
    print(&page)
}

/// Writes `bytes` to standard output. A reader that stopped early (`multiproc man | head`) is
/// no error: it had what it wanted.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("cannot write to standard output"),
    }
}
