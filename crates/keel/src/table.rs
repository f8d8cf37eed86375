//! Terminal tables with colour when the output is a terminal (and `NO_COLOR` is unset).

use std::io::IsTerminal;

pub const RED: &str = "31";
pub const GREEN: &str = "32";
pub const YELLOW: &str = "33";
pub const DIM: &str = "2";
pub const BOLD: &str = "1";

pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

pub fn paint(text: &str, code: &str) -> String {
    if color_enabled() { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

/// A cell: its text and an optional colour.
pub struct Cell {
    pub text: String,
    pub color: Option<&'static str>,
    pub right: bool,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), color: None, right: false }
    }

    pub fn num(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), color: None, right: true }
    }

    pub fn color(mut self, color: &'static str) -> Cell {
        self.color = Some(color);
        self
    }
}

pub fn render(headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (idx, cell) in row.iter().enumerate() {
            widths[idx] = widths[idx].max(cell.text.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().zip(&widths).map(|(h, w)| format!("{h:<w$}")).collect();
    out.push_str(&paint(header.join("  ").trim_end(), BOLD));
    out.push('\n');
    for row in rows {
        let mut line = Vec::new();
        for (cell, width) in row.iter().zip(&widths) {
            let padded = if cell.right { format!("{:>width$}", cell.text) } else { format!("{:<width$}", cell.text) };
            line.push(match cell.color {
                Some(color) => paint(&padded, color),
                None => padded,
            });
        }
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
