//! Plain-text tables and number formatting for the terminal.

/// Formats a number with about six significant digits, in scientific notation when very
/// large or small.
pub fn num(x: f64) -> String {
    if x == 0.0 {
        "0".to_string()
    } else if !x.is_finite() {
        format!("{x}")
    } else if (1e-3..1e6).contains(&x.abs()) {
        let digits = (5 - x.abs().log10().floor() as i32).clamp(0, 9) as usize;
        format!("{x:.digits$}")
    } else {
        format!("{x:.3e}")
    }
}

/// A table with left-aligned text columns, printed with two spaces between columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as headings; a shorter row leaves cells empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let width = |c: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map(String::as_str).unwrap_or("");
                out.push_str(cell);
                if c + 1 < cols {
                    out.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(2.0), "2.00000");
        assert_eq!(num(0.571428), "0.571428");
        assert_eq!(num(1e-14), "1.000e-14");
    }

    #[test]
    fn aligned() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["long".into(), "x".into()]);
        assert_eq!(t.render(), "a     bb\nlong  x\n");
    }
}
