//! A one-line progress display for the command-line tools (`digimedfs backup begin`,
//! `verify` and `restore`, `fsck.digimed`): redrawn in place with `\r`, padded over a longer
//! previous text, cleared before the tool prints anything else and when it is dropped (a tool
//! that fails leaves no half line before its error). [`Line::stderr`] draws only when stderr is
//! a terminal, so scripts and logs see only the result.

use std::io::{IsTerminal, Write};

/// A progress line on a writer (nothing is drawn until the first [`Line::show`]).
pub struct Line<W: Write> {
    /// None: progress is not shown.
    out: Option<W>,
    /// Characters of the line on screen (0: none).
    shown: usize,
}

impl Line<std::io::Stderr> {
    /// A line on stderr if that is a terminal; otherwise one that writes nothing.
    pub fn stderr() -> Line<std::io::Stderr> {
        let err = std::io::stderr();
        Line::new(err.is_terminal().then_some(err))
    }
}

impl<W: Write> Line<W> {
    /// A line on `out`, or one that writes nothing.
    pub fn new(out: Option<W>) -> Line<W> {
        Line { out, shown: 0 }
    }

    /// Replaces the line with `text`.
    pub fn show(&mut self, text: &str) {
        let Some(out) = &mut self.out else { return };
        let width = text.chars().count();
        let pad = self.shown.saturating_sub(width);
        let _ = write!(out, "\r{text}{:pad$}", "");
        let _ = out.flush();
        self.shown = width;
    }

    /// Removes the line (before the command's result).
    pub fn clear(&mut self) {
        let Some(out) = &mut self.out else { return };
        if self.shown > 0 {
            let _ = write!(out, "\r{:w$}\r", "", w = self.shown);
            let _ = out.flush();
            self.shown = 0;
        }
    }
}

impl<W: Write> Drop for Line<W> {
    /// A command that fails leaves no half line before its error message.
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn the_line_is_redrawn_padded_and_cleared() {
        let mut out = Vec::new();
        {
            let mut line = Line::new(Some(&mut out));
            line.show("verifying: 10 of 20 files");
            line.show("verifying: 9 of 20");
            line.clear();
            line.clear();
        }
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            format!(
                "\rverifying: 10 of 20 files\rverifying: 9 of 20{}\r{}\r",
                " ".repeat(7),
                " ".repeat(18)
            )
        );
    }

    #[test]
    fn a_line_that_is_not_shown_writes_nothing_and_drop_clears() {
        let mut line: Line<Vec<u8>> = Line::new(None);
        line.show("anything");
        line.clear();
        assert!(line.out.is_none());
        let mut out = Vec::new();
        {
            let mut line = Line::new(Some(&mut out));
            line.show("ab");
        }
        assert_eq!(out, b"\rab\r  \r");
    }
}
