//! Printing results: `--json` (one JSON value on stdout) or a human form.

use std::io::Write;

use serde::Serialize;

use super::CliError;

/// Prints one JSON value on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Failure(format!("cannot render JSON: {e}")))?;
    // A closed stdout (`| head`) is a failure to report, not a panic.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| CliError::Failure(format!("cannot write to stdout: {e}")))
}

/// Writes one line on stdout; a closed stdout is an error, not a panic.
pub fn line(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{args}").map_err(|e| CliError::Failure(format!("cannot write to stdout: {e}")))
}

/// Renders rows as an aligned plain-text table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut parts = Vec::new();
        for (cell, w) in cells.zip(&widths) {
            parts.push(format!("{cell:<w$}"));
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let text = table(
            &["ID", "NAME"],
            &[
                vec!["a".into(), "first".into()],
                vec!["long-id".into(), "x".into()],
            ],
        );
        assert_eq!(text, "ID       NAME\na        first\nlong-id  x\n");
    }
}
