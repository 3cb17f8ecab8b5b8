//! The command template of `multiproc run`: GNU parallel's replacement strings, and the shell
//! quoting of the values put in their place.
//!
//! The command words are joined with spaces into one shell command line, as GNU parallel does
//! (so `multiproc run 'echo {} | wc -c'` and `multiproc run echo {} '|' wc -c` mean the same).
//! A replacement string is `{}` (the whole argument), `{.}` (without its extension), `{/}`
//! (basename), `{//}` (dirname), `{/.}` (basename without extension), `{#}` (the job's
//! sequence number), `{%}` (its job slot), and the positional forms `{3}`, `{3.}`, `{3/}`,
//! `{3//}`, `{3/.}`, `{-1}` (the last argument), and so on. A command without any of them gets
//! ` {}` appended.

use anyhow::bail;

/// What a replacement string does to an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `{}`: the argument as it is.
    Whole,
    /// `{.}`: without its last extension.
    NoExt,
    /// `{/}`: its basename.
    Base,
    /// `{//}`: its dirname.
    Dir,
    /// `{/.}`: its basename without extension.
    BaseNoExt,
}

impl Kind {
    /// Applies the transformation to `arg`, exactly as GNU parallel's Perl does.
    pub(crate) fn apply<'a>(self, arg: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        match self {
            Kind::Whole => Cow::Borrowed(arg),
            Kind::NoExt => Cow::Borrowed(no_ext(arg)),
            Kind::Base => Cow::Borrowed(basename(arg)),
            Kind::BaseNoExt => Cow::Borrowed(no_ext(basename(arg))),
            Kind::Dir => Cow::Owned(dirname(arg).to_vec()),
        }
    }
}

/// `s:\.[^/.]*$::`: drops the last `.ext` of the last path component.
fn no_ext(s: &[u8]) -> &[u8] {
    match s.iter().rposition(|&b| b == b'.' || b == b'/') {
        Some(i) if s[i] == b'.' => &s[..i],
        _ => s,
    }
}

/// `s:.*/::`: what follows the last slash.
fn basename(s: &[u8]) -> &[u8] {
    match s.iter().rposition(|&b| b == b'/') {
        Some(i) => &s[i + 1..],
        None => s,
    }
}

/// Perl's `File::Basename::dirname` on Unix, which is POSIX `dirname`: `a/b.c` → `a`, `/x` →
/// `/`, `noext` → `.`, `a/` → `.`, `` → `.`.
fn dirname(s: &[u8]) -> &[u8] {
    if !s.is_empty() && s.iter().all(|&b| b == b'/') {
        return b"/";
    }
    let s = trim_slashes(s);
    match s.iter().rposition(|&b| b == b'/') {
        None => b".",
        Some(i) => {
            let d = trim_slashes(&s[..=i]);
            if d.is_empty() { b"/" } else { d }
        }
    }
}

/// `s` without its trailing slashes.
fn trim_slashes(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    &s[..end]
}

/// Which argument(s) a replacement string takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pos {
    /// All of them, each quoted, separated by spaces.
    All,
    /// The n-th (1-based); empty when there are fewer.
    Nth(usize),
    /// The n-th from the end (`{-1}` is the last).
    FromEnd(usize),
}

/// A piece of a command word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text taken as it is.
    Lit(Vec<u8>),
    /// An argument replacement string.
    Arg(Pos, Kind),
    /// `{#}`.
    Seq,
    /// `{%}`.
    Slot,
}

/// What a job's command is made from: its arguments and its numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// The job's arguments (all input sources and, with `-n`, all records, in order).
    pub(crate) args: &'a [Vec<u8>],
    /// The job's sequence number, from 1.
    pub(crate) seq: u64,
    /// The job slot, from 1.
    pub(crate) slot: usize,
    /// With `-X`, while a word is repeated for each argument: the argument `{}` stands for.
    context: Option<usize>,
}

impl<'a> Ctx<'a> {
    /// The context of a job.
    pub(crate) fn new(args: &'a [Vec<u8>], seq: u64, slot: usize) -> Ctx<'a> {
        Ctx {
            args,
            seq,
            slot,
            context: None,
        }
    }

    /// The arguments a position refers to.
    fn select(&self, pos: Pos) -> &'a [Vec<u8>] {
        let n = self.args.len();
        match pos {
            Pos::All => match self.context {
                Some(i) => &self.args[i..=i],
                None => self.args,
            },
            Pos::Nth(k) if (1..=n).contains(&k) => &self.args[k - 1..k],
            Pos::FromEnd(k) if (1..=n).contains(&k) => &self.args[n - k..n - k + 1],
            _ => &[],
        }
    }
}

/// Shell words that are builtins or keywords of the usual Bourne shells: a command whose first
/// word is one of them always goes through the shell (`true` and `false` behave the same either
/// way, so they are not listed).
const SHELL_WORDS: &[&str] = &[
    ".",
    ":",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "coproc",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "fc",
    "fg",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// How a template is read and rendered: the options of `multiproc run` that change the
/// command rather than the input.
#[derive(Debug, Clone, Default)]
pub(crate) struct Syntax {
    /// `-I STR`: the string that stands for the whole argument instead of `{}`.
    pub(crate) replace: Option<Vec<u8>>,
    /// `-q`: quote each whole word of the command, not only the values.
    pub(crate) quote_words: bool,
    /// `-X`: repeat a word holding `{}` once per argument (context replace).
    pub(crate) context: bool,
    /// `--pipe`: the input goes to the jobs' stdin, so no ` {}` is appended.
    pub(crate) pipe: bool,
    /// `--header`: column names, each with the 1-based position of its value (`{name}` is
    /// `{N}`, and so are `{name.}`, `{name/}`, ...).
    pub(crate) names: Vec<(Vec<u8>, usize)>,
}

/// How values and words are quoted in a rendered line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Each value quoted, but in the first word (the shell line).
    Values,
    /// Each word built as it is, then quoted whole (`-q`).
    Words,
    /// Nothing quoted (`--tagstring`).
    Raw,
}

/// A parsed command template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The words, each a list of pieces. Empty when no command was given: then each job's
    /// arguments are the command.
    words: Vec<Vec<Piece>>,
    /// What goes before each word: a space but before the first; with `-X`, the blanks a
    /// word holding `{}` was split at (see [`split_at_blanks`]).
    seps: Vec<Vec<u8>>,
    /// Whether a shell would see nothing but plain words here (no shell syntax, no builtin),
    /// so that running the program directly behaves the same.
    plain: bool,
    /// `-q`.
    quote_words: bool,
    /// `-X`.
    context: bool,
    /// Whether [`Template::added_len`] can tell what one more argument adds.
    additive: bool,
    /// Whether values are quoted: not when a replacement string is part of the command's
    /// first word (GNU parallel's rule).
    quote_values: bool,
}

impl Template {
    /// Parses the command words, appending ` {}` if they have no replacement string.
    pub(crate) fn parse(words: &[Vec<u8>], syntax: &Syntax) -> anyhow::Result<Template> {
        let mut parsed = Vec::with_capacity(words.len() + 1);
        let mut any = false;
        for w in words {
            let pieces = parse_word(w, syntax)?;
            any |= pieces.iter().any(|p| !matches!(p, Piece::Lit(_)));
            parsed.push(pieces);
        }
        if !parsed.is_empty() && !any && !syntax.pipe {
            parsed.push(vec![Piece::Arg(Pos::All, Kind::Whole)]);
        }
        let plain = is_plain(&parsed, syntax.quote_words);
        let quote_values = !names_the_command(&parsed);
        let (parsed, seps) = if syntax.context && !syntax.quote_words {
            split_at_blanks(parsed)
        } else {
            let seps = (0..parsed.len())
                .map(|i| if i == 0 { Vec::new() } else { b" ".to_vec() })
                .collect();
            (parsed, seps)
        };
        let additive = is_additive(&parsed, syntax);
        Ok(Template {
            words: parsed,
            seps,
            plain,
            quote_words: syntax.quote_words,
            context: syntax.context,
            additive,
            quote_values,
        })
    }

    /// A template for text that is not a command (`--tagstring`): its replacement strings
    /// are all there is to it, and nothing is appended.
    pub(crate) fn parse_text(text: &[u8], syntax: &Syntax) -> anyhow::Result<Template> {
        Ok(Template {
            words: vec![parse_word(text, syntax)?],
            seps: vec![Vec::new()],
            plain: false,
            quote_words: false,
            context: false,
            additive: false,
            quote_values: false,
        })
    }

    /// Whether it holds any replacement string.
    pub(crate) fn has_replacements(&self) -> bool {
        self.words
            .iter()
            .flatten()
            .any(|p| !matches!(p, Piece::Lit(_)))
    }

    /// The program of a template that may skip the shell: its first word, which is then a
    /// plain literal. `None` when the shell is needed.
    pub(crate) fn plain_program(&self) -> Option<&[u8]> {
        if !self.plain {
            return None;
        }
        match self.words.first()?.as_slice() {
            [Piece::Lit(w)] => Some(w),
            _ => None,
        }
    }

    /// The shell command line of a job: the words joined by spaces, each replaced value
    /// shell-quoted as GNU parallel quotes it (with `-q`, each whole word quoted instead).
    /// When a replacement string is part of the command's first word, no value is quoted, so
    /// that the input can name the command (`echo 'ls -l' | parallel {}`), as GNU parallel
    /// does. Without a command, the arguments themselves, unquoted.
    pub(crate) fn shell_line(&self, ctx: &Ctx<'_>, out: &mut Vec<u8>) {
        let quoting = if self.quote_words {
            Quoting::Words
        } else {
            Quoting::Values
        };
        self.render(ctx, quoting, out);
    }

    /// The text with its values put in as they are (`--tagstring`).
    pub(crate) fn raw_line(&self, ctx: &Ctx<'_>, out: &mut Vec<u8>) {
        self.render(ctx, Quoting::Raw, out);
    }

    /// The length of [`Template::shell_line`].
    pub(crate) fn shell_line_len(&self, ctx: &Ctx<'_>) -> usize {
        let mut line = Vec::new();
        self.shell_line(ctx, &mut line);
        line.len()
    }

    /// How many bytes longer [`Template::shell_line`] gets when `arg` is added after
    /// `before` (at least one) arguments, without rendering the line; `None` when that takes
    /// the whole line (`-q`, `{-N}`, a positional string in a word `-X` repeats).
    pub(crate) fn added_len(&self, before: usize, arg: &[u8], seq: u64) -> Option<usize> {
        if !self.additive || before == 0 {
            return None;
        }
        if self.words.is_empty() {
            return Some(1 + arg.len());
        }
        let value_len = |kind: Kind, quoted: bool| {
            let v = kind.apply(arg);
            if quoted { quote(&v).len() } else { v.len() }
        };
        let mut n = 0;
        let one = [arg.to_vec()];
        let quoted = self.quote_values;
        for word in &self.words {
            if self.context && word.iter().any(|p| matches!(p, Piece::Arg(Pos::All, _))) {
                // One more copy of the word, after a space.
                let copy = Ctx {
                    context: Some(0),
                    ..Ctx::new(&one, seq, 1)
                };
                let mut w = Vec::new();
                render_word(word, &copy, quoted, &mut w);
                n += 1 + w.len();
                continue;
            }
            for piece in word {
                match piece {
                    Piece::Arg(Pos::All, kind) => n += 1 + value_len(*kind, quoted),
                    Piece::Arg(Pos::Nth(k), kind) if *k == before + 1 => {
                        n += value_len(*kind, quoted)
                    }
                    _ => {}
                }
            }
        }
        Some(n)
    }

    /// Renders every word (every copy of it, with `-X`), separated by spaces.
    fn render(&self, ctx: &Ctx<'_>, quoting: Quoting, out: &mut Vec<u8>) {
        if self.words.is_empty() {
            if quoting == Quoting::Words {
                // `-q` with the command in the input: each argument is one word.
                for (i, a) in ctx.args.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    quote_into(a, out);
                }
            } else {
                join(ctx.args, out);
            }
            return;
        }
        let mut raw = Vec::new();
        for (word, sep) in self.words.iter().zip(&self.seps) {
            for (n, copy) in self.copies(word, ctx).into_iter().enumerate() {
                if n == 0 {
                    out.extend_from_slice(sep);
                } else {
                    out.push(b' ');
                }
                match quoting {
                    Quoting::Values => render_word(word, &copy, self.quote_values, out),
                    Quoting::Raw => render_word(word, &copy, false, out),
                    Quoting::Words => {
                        raw.clear();
                        render_word(word, &copy, false, &mut raw);
                        quote_into(&raw, out);
                    }
                }
            }
        }
    }

    /// The contexts a word is rendered in: with `-X`, a word holding `{}` once per argument
    /// (the other replacement strings still see all of them); otherwise once.
    fn copies<'a>(&self, word: &[Piece], ctx: &Ctx<'a>) -> Vec<Ctx<'a>> {
        let repeated = self.context
            && !ctx.args.is_empty()
            && word.iter().any(|p| matches!(p, Piece::Arg(Pos::All, _)));
        if !repeated {
            return vec![*ctx];
        }
        (0..ctx.args.len())
            .map(|i| Ctx {
                context: Some(i),
                ..*ctx
            })
            .collect()
    }

    /// The argument vector of a job run without a shell: what a shell would make of
    /// [`Template::shell_line`] when the template is plain, and the definition of `--no-shell`
    /// otherwise. Several values in one replacement string make several words (but with
    /// `-q`, which keeps each word whole); a replacement string with no value (a missing
    /// `{3}`) adds nothing. Without a command, the arguments.
    pub(crate) fn argv(&self, ctx: &Ctx<'_>) -> Vec<Vec<u8>> {
        if self.words.is_empty() {
            return ctx.args.to_vec();
        }
        let mut argv = Vec::with_capacity(self.words.len() + ctx.args.len());
        for word in &self.words {
            for copy in self.copies(word, ctx) {
                if self.quote_words {
                    let mut w = Vec::new();
                    render_word(word, &copy, false, &mut w);
                    argv.push(w);
                } else {
                    split_word(word, &copy, &mut argv);
                }
            }
        }
        argv
    }
}

/// Appends one rendering of a word: several values of one replacement string separated by
/// spaces, each quoted when `quote`.
fn render_word(word: &[Piece], ctx: &Ctx<'_>, quote: bool, out: &mut Vec<u8>) {
    for piece in word {
        match piece {
            Piece::Lit(s) => out.extend_from_slice(s),
            Piece::Seq => out.extend_from_slice(ctx.seq.to_string().as_bytes()),
            Piece::Slot => out.extend_from_slice(ctx.slot.to_string().as_bytes()),
            Piece::Arg(pos, kind) => {
                for (j, a) in ctx.select(*pos).iter().enumerate() {
                    if j > 0 {
                        out.push(b' ');
                    }
                    if quote {
                        quote_into(&kind.apply(a), out);
                    } else {
                        out.extend_from_slice(&kind.apply(a));
                    }
                }
            }
        }
    }
}

/// Appends the words a shell makes of one rendered word: several values of one replacement
/// string end one word and start the next; a word of no pieces with a value adds nothing.
fn split_word(word: &[Piece], ctx: &Ctx<'_>, argv: &mut Vec<Vec<u8>>) {
    // The word being built, and whether it holds anything (even an empty value).
    let mut cur = Vec::new();
    let mut some = false;
    for piece in word {
        match piece {
            Piece::Lit(s) => {
                cur.extend_from_slice(s);
                some |= !s.is_empty();
            }
            Piece::Seq => {
                cur.extend_from_slice(ctx.seq.to_string().as_bytes());
                some = true;
            }
            Piece::Slot => {
                cur.extend_from_slice(ctx.slot.to_string().as_bytes());
                some = true;
            }
            Piece::Arg(pos, kind) => {
                for (j, a) in ctx.select(*pos).iter().enumerate() {
                    if j > 0 {
                        argv.push(std::mem::take(&mut cur));
                    }
                    cur.extend_from_slice(&kind.apply(a));
                    some = true;
                }
            }
        }
    }
    if some {
        argv.push(cur);
    }
}

/// Appends `args` joined by spaces.
pub(crate) fn join(args: &[Vec<u8>], out: &mut Vec<u8>) {
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(a);
    }
}

/// Whether the shell would take these words as they are: every literal made of characters
/// with no meaning to a shell, and the first word a program name that is no builtin, keyword
/// or assignment. With `-q` (`quoted`) every word is quoted whole, so any literal is taken
/// as it is.
fn is_plain(words: &[Vec<Piece>], quoted: bool) -> bool {
    let Some(first) = words.first() else {
        return false;
    };
    let [Piece::Lit(name)] = first.as_slice() else {
        return false;
    };
    let name_ok = !name.is_empty()
        && !name.contains(&b'=')
        && std::str::from_utf8(name).is_ok_and(|n| !SHELL_WORDS.contains(&n));
    name_ok
        && words.iter().flatten().all(|p| match p {
            Piece::Lit(s) => quoted || s.iter().all(|&b| is_plain_byte(b)),
            _ => true,
        })
}

/// With `-X`: splits each word holding `{}` at the blanks in its text, as GNU parallel
/// repeats the blank-delimited part of the command line around `{}`, not the whole argument
/// (`'echo {} | wc -w'` repeats `{}` alone). Returns the words and what goes before each:
/// a space between arguments, and the blanks a word was split at, so that the line reads as
/// it was written.
fn split_at_blanks(words: Vec<Vec<Piece>>) -> (Vec<Vec<Piece>>, Vec<Vec<u8>>) {
    let is_blank = |b: &u8| b" \t\n".contains(b);
    let mut out = Vec::with_capacity(words.len());
    let mut seps = Vec::with_capacity(words.len());
    for (i, word) in words.into_iter().enumerate() {
        let mut sep = if i == 0 { Vec::new() } else { b" ".to_vec() };
        let holds_all = word.iter().any(|p| matches!(p, Piece::Arg(Pos::All, _)));
        let has_blank = word
            .iter()
            .any(|p| matches!(p, Piece::Lit(s) if s.iter().any(is_blank)));
        if !holds_all || !has_blank {
            out.push(word);
            seps.push(sep);
            continue;
        }
        let mut cur: Vec<Piece> = Vec::new();
        for piece in word {
            let Piece::Lit(s) = piece else {
                cur.push(piece);
                continue;
            };
            let mut text = Vec::new();
            let mut blanks = Vec::new();
            for &b in &s {
                if is_blank(&b) {
                    blanks.push(b);
                    continue;
                }
                if !blanks.is_empty() {
                    // A blank run ends a word (or leads the first one).
                    if !text.is_empty() {
                        cur.push(Piece::Lit(std::mem::take(&mut text)));
                    }
                    if cur.is_empty() {
                        sep.append(&mut blanks);
                    } else {
                        out.push(std::mem::take(&mut cur));
                        seps.push(std::mem::replace(&mut sep, std::mem::take(&mut blanks)));
                    }
                }
                text.push(b);
            }
            if !text.is_empty() {
                cur.push(Piece::Lit(text));
            }
            if !blanks.is_empty() {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    seps.push(std::mem::take(&mut sep));
                }
                sep.append(&mut blanks);
            }
        }
        // The last word, or the blanks that ended the argument (as an empty word).
        out.push(cur);
        seps.push(sep);
    }
    (out, seps)
}

/// Whether a replacement string comes before the first blank or `=` of the command line: then
/// it is (part of) the command's name and GNU parallel quotes no value (`parallel {}`,
/// `parallel my_{}`, not `parallel V={} cmd`).
fn names_the_command(words: &[Vec<Piece>]) -> bool {
    let Some(first) = words.first() else {
        return false;
    };
    for piece in first {
        match piece {
            Piece::Lit(s) if s.iter().any(|b| b" \t\n=".contains(b)) => return false,
            Piece::Lit(_) => {}
            _ => return true,
        }
    }
    false
}

/// Whether what one more argument adds to a line can be told from the argument alone: not
/// with `-q` (a word is quoted whole), `{-N}` (its value moves), or a positional string in a
/// word `-X` repeats.
fn is_additive(words: &[Vec<Piece>], syntax: &Syntax) -> bool {
    !syntax.quote_words
        && words.iter().all(|word| {
            let repeated =
                syntax.context && word.iter().any(|p| matches!(p, Piece::Arg(Pos::All, _)));
            word.iter().all(|p| match p {
                Piece::Arg(Pos::FromEnd(_), _) => false,
                Piece::Arg(Pos::Nth(_), _) => !repeated,
                _ => true,
            })
        })
}

/// A byte no Bourne shell gives a meaning to, in any position of a word (`~` and `#` only
/// matter at the start of one, but they are rare enough to always leave to the shell).
fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_./+,:@%=".contains(&b)
}

/// Splits a command word into literal text and replacement strings; `-I`'s string stands for
/// the whole argument instead of `{}`, and `--header`'s names for their columns.
fn parse_word(w: &[u8], syntax: &Syntax) -> anyhow::Result<Vec<Piece>> {
    let replace = syntax.replace.as_deref();
    let mut pieces = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < w.len() {
        if let Some(r) = replace
            && !r.is_empty()
            && w[i..].starts_with(r)
        {
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Arg(Pos::All, Kind::Whole));
            i += r.len();
            continue;
        }
        if w[i] == b'{' {
            if w.get(i + 1) == Some(&b'=') {
                bail!(
                    "Perl expressions ({{= ... =}}) are not supported in {:?}",
                    String::from_utf8_lossy(w)
                );
            }
            if let Some(end) = w[i..].iter().position(|&b| b == b'}')
                && let Some(piece) = parse_replacement(&w[i + 1..i + end], &syntax.names)
                // Under `-I`, `{}` is plain text.
                && (replace.is_none() || end > 1)
            {
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(piece);
                i += end + 1;
                continue;
            }
        }
        lit.push(w[i]);
        i += 1;
    }
    if !lit.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// The replacement string whose inside (between the braces) is `s`, if it is one; `names`
/// are `--header`'s.
fn parse_replacement(s: &[u8], names: &[(Vec<u8>, usize)]) -> Option<Piece> {
    match s {
        b"#" => return Some(Piece::Seq),
        b"%" => return Some(Piece::Slot),
        _ => {}
    }
    for (suffix, kind) in [
        (&b"/."[..], Kind::BaseNoExt),
        (b"//", Kind::Dir),
        (b"/", Kind::Base),
        (b".", Kind::NoExt),
        (b"", Kind::Whole),
    ] {
        if let Some(name) = s.strip_suffix(suffix)
            && let Some((_, pos)) = names.iter().find(|(n, _)| n == name && !n.is_empty())
        {
            return Some(Piece::Arg(Pos::Nth(*pos), kind));
        }
    }
    let (neg, rest) = match s.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (num, suffix) = rest.split_at(digits);
    let kind = match suffix {
        b"" => Kind::Whole,
        b"." => Kind::NoExt,
        b"/" => Kind::Base,
        b"//" => Kind::Dir,
        b"/." => Kind::BaseNoExt,
        _ => return None,
    };
    let pos = if num.is_empty() {
        if neg {
            return None;
        }
        Pos::All
    } else {
        let n: usize = std::str::from_utf8(num).ok()?.parse().ok()?;
        if n == 0 {
            return None;
        }
        if neg { Pos::FromEnd(n) } else { Pos::Nth(n) }
    };
    Some(Piece::Arg(pos, kind))
}

/// Appends `s` quoted for a Bourne shell exactly as GNU parallel quotes a value: as it is when
/// made only of `[-_.+a-zA-Z0-9/]`, `''` when empty, otherwise in single quotes, each `'`
/// written `'"'"'`, and a leading or trailing `''` left out.
pub fn quote_into(s: &[u8], out: &mut Vec<u8>) {
    if s.is_empty() {
        out.extend_from_slice(b"''");
        return;
    }
    if s.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-_.+/".contains(&b))
    {
        out.extend_from_slice(s);
        return;
    }
    let mut q = Vec::with_capacity(s.len() + 2);
    q.push(b'\'');
    for &b in s {
        if b == b'\'' {
            q.extend_from_slice(b"'\"'\"'");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    let start = if q.starts_with(b"''") { 2 } else { 0 };
    let end = if q[start..].ends_with(b"''") {
        q.len() - 2
    } else {
        q.len()
    };
    out.extend_from_slice(&q[start..end]);
}

/// `s` quoted, as a new vector.
pub(crate) fn quote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    quote_into(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[&str]) -> Vec<Vec<u8>> {
        ws.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn parse(ws: &[&str]) -> anyhow::Result<Template> {
        Template::parse(&words(ws), &Syntax::default())
    }

    fn line_with(syntax: &Syntax, ws: &[&str], args: &[&str]) -> String {
        let t = Template::parse(&words(ws), syntax).expect("parse");
        let args = words(args);
        let mut out = Vec::new();
        let ctx = Ctx::new(&args, 7, 2);
        t.shell_line(&ctx, &mut out);
        assert_eq!(t.shell_line_len(&ctx), out.len());
        String::from_utf8(out).expect("utf-8")
    }

    fn line(ws: &[&str], args: &[&str]) -> String {
        line_with(&Syntax::default(), ws, args)
    }

    #[test]
    fn quoting_matches_gnu_parallel() {
        let q = |s: &str| String::from_utf8(quote(s.as_bytes())).expect("utf-8");
        assert_eq!(q("plain-1.2_a+b/c"), "plain-1.2_a+b/c");
        assert_eq!(q(""), "''");
        assert_eq!(q("a b"), "'a b'");
        assert_eq!(q("it's"), r#"'it'"'"'s'"#);
        assert_eq!(q("'"), r#""'""#);
        assert_eq!(q("'a'"), r#""'"'a'"'""#);
        assert_eq!(q("$HOME"), "'$HOME'");
        assert_eq!(q("é"), "'é'");
    }

    #[test]
    fn path_replacements() {
        let all = [":", "{}", "{.}", "{/}", "{//}", "{/.}"];
        assert_eq!(
            line(&all, &["a/b.c.txt"]),
            ": a/b.c.txt a/b.c b.c.txt a b.c"
        );
        assert_eq!(line(&all, &["/x"]), ": /x /x x / x");
        assert_eq!(line(&all, &["noext"]), ": noext noext noext . noext");
        assert_eq!(line(&all, &["./a.b/c"]), ": ./a.b/c ./a.b/c c ./a.b c");
        assert_eq!(line(&all, &[".hidden"]), ": .hidden '' .hidden . ''");
        assert_eq!(line(&all, &["a/"]), ": a/ a/ '' . ''");
        assert_eq!(line(&["{//}"], &[""]), ".");
        assert_eq!(line(&["{//}"], &["//"]), "/");
        assert_eq!(line(&["{//}"], &["a//b//"]), "a");
    }

    #[test]
    fn no_value_is_quoted_when_one_names_the_command() {
        // GNU parallel's rule: a replacement string before the first blank or `=`.
        assert_eq!(line(&["{}", "x"], &["a  b"]), "a  b x");
        assert_eq!(line(&["x{}", "{}"], &["a  b"]), "xa  b a  b");
        assert_eq!(line(&["echo {}"], &["a  b"]), "echo 'a  b'");
        assert_eq!(line(&["V={}", "cmd"], &["a b"]), "V='a b' cmd");
        assert_eq!(line(&["{#}", "{}"], &["a b"]), "7 a b");
    }

    #[test]
    fn positions_numbers_and_appending() {
        assert_eq!(line(&["echo"], &["a b"]), "echo 'a b'");
        assert_eq!(line(&["echo", "{#}"], &["a"]), "echo 7");
        assert_eq!(line(&["echo", "{%}-{}"], &["a"]), "echo 2-a");
        assert_eq!(line(&["echo", "{2}{1}", "{-1}"], &["a", "b"]), "echo ba b");
        assert_eq!(line(&["echo", "{1}+{3}x"], &["a", "b"]), "echo a+x");
        assert_eq!(line(&["echo", "{2.}", "{1/}"], &["p/a", "b.c"]), "echo b a");
        assert_eq!(line(&["echo", "x{}y"], &["a", "b"]), "echo xa by");
        assert_eq!(line(&["echo", "{x}", "{}"], &["a"]), "echo {x} a");
        assert_eq!(line(&["echo", "{"], &["a"]), "echo { a");
        assert_eq!(line(&[], &["echo", "hi"]), "echo hi");
        assert!(parse(&["echo", "{= $_ =}"]).is_err());
    }

    #[test]
    fn argv_splits_like_the_shell() {
        let t = parse(&["cmd", "x{}y", "{3}", "{2}"]).expect("parse");
        let args = words(&["a", ""]);
        let argv = t.argv(&Ctx::new(&args, 1, 1));
        assert_eq!(argv, words(&["cmd", "xa", "y", ""]));
    }

    #[test]
    fn plain_templates() {
        let plain = |ws: &[&str]| parse(ws).expect("parse").plain_program().is_some();
        assert!(plain(&["true"]));
        assert!(plain(&["gzip", "-9", "--rsyncable", "{}"]));
        assert!(plain(&["cp", "{}", "{.}.bak"]));
        assert!(!plain(&["echo", "{}"]));
        assert!(!plain(&["gzip", "{}", ">", "x"]));
        assert!(!plain(&["gzip {}"]));
        assert!(!plain(&["A=1", "gzip"]));
        assert!(!plain(&["ls", "~"]));
        assert!(!plain(&["ls", "*.c"]));
        assert!(!plain(&["{}"]));
        assert!(!plain(&[]));
    }

    #[test]
    fn replace_string_stands_for_the_whole_argument() {
        let i = Syntax {
            replace: Some(b",,".to_vec()),
            ..Syntax::default()
        };
        // As GNU parallel: `{}` is plain text then, the other replacement strings are not.
        assert_eq!(line_with(&i, &["echo", ",,", "{}"], &["a"]), "echo a {}");
        assert_eq!(
            line_with(&i, &["echo", "x,,.", "{.}"], &["a.x"]),
            "echo xa.x. a"
        );
        assert_eq!(line_with(&i, &["echo"], &["a b"]), "echo 'a b'");
    }

    #[test]
    fn quote_words_quotes_each_whole_word() {
        let q = Syntax {
            quote_words: true,
            ..Syntax::default()
        };
        assert_eq!(
            line_with(&q, &["echo", "a  b|c", "x{}y"], &["x  y"]),
            "echo 'a  b|c' 'xx  yy'"
        );
        let t = Template::parse(&words(&["sh", "-c", "echo $0", "{}"]), &q).expect("parse");
        assert_eq!(t.plain_program(), Some(&b"sh"[..]));
        let args = words(&["a", "b"]);
        assert_eq!(
            t.argv(&Ctx::new(&args, 1, 1)),
            words(&["sh", "-c", "echo $0", "a b"])
        );
    }

    #[test]
    fn context_replace_repeats_the_word_per_argument() {
        let x = Syntax {
            context: true,
            ..Syntax::default()
        };
        let args = ["a.1", "b.2", "c"];
        assert_eq!(
            line_with(&x, &["echo", "x{}y"], &args),
            "echo xa.1y xb.2y xcy"
        );
        assert_eq!(
            line_with(&x, &["echo", "x{.}y{1}"], &args),
            "echo xaya.1 xbya.1 xcya.1"
        );
        assert_eq!(line_with(&x, &["echo", "{2}", "x"], &args), "echo b.2 x");
        // Within one argument, the blank-delimited part around `{}` is repeated, and the
        // blanks stay as written.
        assert_eq!(
            line_with(&x, &["echo {} | wc -w"], &["1", "2", "3"]),
            "echo 1 2 3 | wc -w"
        );
        assert_eq!(
            line_with(&x, &["echo", "a{}b  c"], &["1", "2"]),
            "echo a1b a2b  c"
        );
        assert_eq!(
            line_with(&x, &["echo x{}y z{} "], &["1", "2"]),
            "echo x1y x2y z1 z2 "
        );
        assert_eq!(
            line_with(&x, &["echo", "x{}"], &["a b", "c'd"]),
            r#"echo x'a b' x'c'"'"'d'"#
        );
        let t = Template::parse(&words(&["cp", "{}", "d/"]), &x).expect("parse");
        let args = words(&["a", "b"]);
        assert_eq!(
            t.argv(&Ctx::new(&args, 1, 1)),
            words(&["cp", "a", "b", "d/"])
        );
    }

    #[test]
    fn text_templates_put_values_in_unquoted() {
        let t = Template::parse_text(b"{#}:{}", &Syntax::default()).expect("parse");
        let args = words(&["a b", "c"]);
        let mut out = Vec::new();
        t.raw_line(&Ctx::new(&args, 3, 1), &mut out);
        assert_eq!(out, b"3:a b c");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// What `added_len` says an argument adds is what it adds.
        #[test]
        fn added_len_is_the_growth_of_the_line(
            ws in proptest::collection::vec("(echo|x|\\{\\}|\\{\\.\\}|\\{/\\}|\\{2\\}|\\{#\\}|a\\{\\}b| |'){1,4}", 0..4),
            args in proptest::collection::vec("[a-c./ ']{0,4}", 1..6),
            context: bool,
        ) {
            let syntax = Syntax { context, ..Syntax::default() };
            let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
            let t = Template::parse(&words(&ws), &syntax).expect("parse");
            let args = words(&args.iter().map(String::as_str).collect::<Vec<_>>());
            for n in 1..args.len() {
                let before = t.shell_line_len(&Ctx::new(&args[..n], 12, 1));
                let after = t.shell_line_len(&Ctx::new(&args[..=n], 12, 1));
                if let Some(added) = t.added_len(n, &args[n], 12) {
                    proptest::prop_assert_eq!(before + added, after, "{:?} {:?}", ws, &args[..=n]);
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// What `sh` makes of a quoted value is the value.
        #[test]
        fn quoting_round_trips_through_sh(s in "[^\u{0}]{0,24}") {
            let mut script = b"printf %s ".to_vec();
            quote_into(s.as_bytes(), &mut script);
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(std::ffi::OsStr::new(std::str::from_utf8(&script).expect("utf-8")))
                .output()
                .expect("run sh");
            proptest::prop_assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
