//! Progress on stderr as text, the way GNU parallel writes it where no terminal draws a bar:
//! `--eta` and `--progress` always, `--bar` when stderr is not a terminal (a log, a CI job).
//! Each update is one line that starts with a carriage return, so a terminal shows the last
//! and a log keeps them all.

use std::io::Write;
use std::time::Instant;

/// Which of GNU parallel's progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `--bar`: `45% 9:11=12s ARGS`.
    Bar,
    /// `--eta`: `ETA: 12s Left: 11 AVG: 1.09s  local:2/9/100%/1.1s`.
    Eta,
    /// `--progress`: `local:2/9/100%/1.1s`.
    Progress,
}

/// The meter: what it shows and since when.
pub(crate) struct Meter {
    /// The line's form.
    style: Style,
    /// When the run started.
    start: Instant,
    /// The jobs in all, when known.
    total: Option<u64>,
    /// Whether the second header (the columns of the lines) is out: GNU parallel prints it
    /// once a job runs.
    columns_shown: std::cell::Cell<bool>,
}

impl Meter {
    /// A meter; `--eta` and `--progress` first print GNU parallel's table of computers.
    pub(crate) fn new(style: Style, cores: usize, slots: usize) -> Meter {
        if style != Style::Bar {
            eprint!("\nComputers / CPU cores / Max jobs to run\n1:local / {cores} / {slots}\n");
        }
        Meter {
            style,
            start: Instant::now(),
            total: None,
            columns_shown: std::cell::Cell::new(false),
        }
    }

    /// Sets how many jobs there are.
    pub(crate) fn set_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    /// Writes the line for `running` jobs, `done` finished, `last` the arguments of the last
    /// started; `started` jobs have started (this one too).
    pub(crate) fn update(&self, running: usize, done: u64, started: u64, last: &[u8]) {
        let mut err = std::io::stderr().lock();
        if started > 0 && self.style != Style::Bar && !self.columns_shown.replace(true) {
            let _ = err.write_all(
                b"\nComputer:jobs running/jobs completed/%of started jobs/Average seconds to \
                  complete\n",
            );
        }
        let line = if started == 0 {
            self.idle_line()
        } else {
            self.line(running, done, last)
        };
        let _ = err.write_all(&line);
        let _ = err.flush();
    }

    /// Ends the last line.
    pub(crate) fn finish(&self) {
        eprintln!();
    }

    /// The line while no job has started: GNU parallel's has `0` where the computers go.
    fn idle_line(&self) -> Vec<u8> {
        match self.style {
            Style::Progress => b"\r0".to_vec(),
            Style::Eta => b"\rETA: 0s Left: 0 AVG: 0.00s  0".to_vec(),
            Style::Bar => self.line(0, 0, b""),
        }
    }

    /// The line: see [`Style`].
    fn line(&self, running: usize, done: u64, last: &[u8]) -> Vec<u8> {
        let elapsed = self.start.elapsed().as_secs_f64();
        let avg = if done > 0 { elapsed / done as f64 } else { 0.0 };
        let left = self.total.map_or(0, |t| t.saturating_sub(done));
        let eta = (avg * left as f64 / running.max(1) as f64).round() as u64;
        let host = format!("local:{running}/{done}/100%/{avg:.1}s ");
        let mut line = b"\r".to_vec();
        match self.style {
            Style::Progress => line.extend_from_slice(host.as_bytes()),
            Style::Eta => line.extend_from_slice(
                format!("ETA: {eta}s Left: {left} AVG: {avg:.2}s  {host}").as_bytes(),
            ),
            Style::Bar => {
                let frac = match self.total {
                    Some(t) if t > 0 && done > 0 => (done as f64 / t as f64).min(1.0),
                    _ => 0.0,
                };
                line = gnu_bar(frac, done, left, eta, &String::from_utf8_lossy(last));
            }
        }
        line
    }
}

/// GNU parallel's `--bar` as text (where no terminal draws it), for `done` of `done + left`
/// jobs (`frac` of them), `eta` seconds to go, the last job's arguments `arg`: a line for
/// `zenity --progress` (`#   ETA sec ARG`), the percentage alone, then the bar itself, 80
/// columns (GNU's width without a terminal) in reverse video up to the percentage done.
fn gnu_bar(frac: f64, done: u64, left: u64, eta: u64, arg: &str) -> Vec<u8> {
    const WIDTH: usize = 80;
    let pad = |text: String| -> Vec<char> {
        let mut c: Vec<char> = text.chars().take(WIDTH).collect();
        c.resize(WIDTH, ' ');
        c
    };
    let text = format!(
        "{}% {done}:{left}={} {arg}",
        (frac * 100.0) as u64,
        seconds_to_time_units(eta)
    );
    let mut bar = pad(text);
    let cut = (WIDTH as f64 * frac) as usize;
    let (done_part, rest): (String, String) =
        (bar.drain(..cut).collect(), bar.into_iter().collect());
    let zenity: String = pad(format!("#   {eta} sec {arg}")).into_iter().collect();
    format!(
        "\r\r{zenity}\r{}\r\x1b[7m{done_part}\x1b[0m{rest}\x1b[0m",
        perl_number(frac * 100.0)
    )
    .into_bytes()
}

/// GNU parallel's `seconds_to_time_units`: `5s`, `1m05s`, `2h01m05s`, `1d02h01m05s`.
fn seconds_to_time_units(s: u64) -> String {
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m{s:02}s"),
        _ => format!("{d}d{h:02}h{m:02}m{s:02}s"),
    }
}

/// `x` as Perl prints a number: an integer without a fraction, otherwise 15 significant
/// digits with the trailing zeros dropped.
fn perl_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{}", x as i64);
    }
    let digits = 14 - x.abs().log10().floor() as i32;
    let s = format!("{:.*}", digits.max(0) as usize, x);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_gnu_parallels_fields() {
        let mut m = Meter {
            style: Style::Eta,
            start: Instant::now(),
            total: None,
            columns_shown: std::cell::Cell::new(false),
        };
        m.set_total(3);
        let eta = String::from_utf8(m.line(1, 1, b"a")).expect("utf-8");
        assert!(
            eta.starts_with("\rETA: ") && eta.contains(" Left: 2 AVG: "),
            "{eta}"
        );
        assert!(eta.contains("  local:1/1/100%/"), "{eta}");
        m.style = Style::Bar;
        let bar = String::from_utf8(m.line(0, 3, b"c d")).expect("utf-8");
        let zenity = format!("#   0 sec c d{}", " ".repeat(80 - 13));
        let text = format!("100% 3:0=0s c d{}", " ".repeat(80 - 15));
        assert_eq!(
            bar,
            format!("\r\r{zenity}\r100\r\x1b[7m{text}\x1b[0m\x1b[0m")
        );
        assert_eq!(seconds_to_time_units(65), "1m05s");
        assert_eq!(seconds_to_time_units(90_061), "1d01h01m01s");
        assert_eq!(perl_number(100.0 / 3.0), "33.3333333333333");
        assert_eq!(perl_number(50.0), "50");
        assert_eq!(perl_number(0.0), "0");
        m.style = Style::Progress;
        let p = String::from_utf8(m.line(2, 0, b"")).expect("utf-8");
        assert_eq!(p, "\rlocal:2/0/100%/0.0s ");
        assert_eq!(m.idle_line(), b"\r0");
        m.style = Style::Eta;
        assert_eq!(m.idle_line(), b"\rETA: 0s Left: 0 AVG: 0.00s  0");
    }
}
