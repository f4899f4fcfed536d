//! Self-contained HTML reports: inline CSS and inline SVG, no script, no font or file from the
//! network, readable on a laptop screen and in print.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use sgdlab::lab::figures::Figure;

/// Escapes text for HTML.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table from a header and rows of already-escaped HTML cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A figure with its caption: the SVG inline.
pub fn figure(fig: &Figure) -> anyhow::Result<String> {
    let svg = crate::plot::svg(fig)?;
    // Drop any XML prolog so that the SVG can sit inside HTML.
    let svg = match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg.as_str(),
    };
    Ok(format!(
        "<figure>{svg}<figcaption>{}</figcaption></figure>",
        esc(&fig.caption)
    ))
}

/// One section of a page.
pub struct Section {
    /// Heading.
    pub heading: String,
    /// HTML body (tables, paragraphs), before the figures.
    pub body: String,
    /// Figures.
    pub figures: Vec<Figure>,
}

const STYLE: &str = "
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
  margin: 0 auto; max-width: 1040px; padding: 24px; color: #1a1a1a; background: #fff;
  line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
p.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin: 12px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top;
  font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
.pass { color: #11703a; font-weight: 600; }
.fail { color: #b00020; font-weight: 600; }
figure { margin: 16px 0; }
figure svg { width: 100%; height: auto; max-width: 960px; display: block; }
figcaption { color: #444; font-size: 0.9em; margin-top: 4px; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  h2 { break-after: avoid; }
  figure, table { break-inside: avoid; }
}
";

/// Writes `dir/index.html` (atomically; `dir` is created).
/// Creates the report directory `dir` and checks that files can be written into it, so that
/// an unwritable `--report` fails before the work, not after.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let probe = dir.join(".sgdlab-write-check");
    sgdlab::io::write_atomic(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("cannot write into {}", dir.display()))
}

pub fn write_page(dir: &Path, title: &str, meta: &str, sections: &[Section]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1><p class=\"meta\">{}</p>",
        esc(title),
        esc(title),
        esc(meta)
    );
    if sections.len() > 1 {
        html.push_str("<nav><h2>Contents</h2><ol>");
        for (k, s) in sections.iter().enumerate() {
            let _ = write!(
                html,
                "<li><a href=\"#s{}\">{}</a></li>",
                k + 1,
                esc(&s.heading)
            );
        }
        html.push_str("</ol></nav>");
    }
    for (k, s) in sections.iter().enumerate() {
        let _ = write!(
            html,
            "<section id=\"s{}\"><h2>{}</h2>{}",
            k + 1,
            esc(&s.heading),
            s.body
        );
        for f in &s.figures {
            html.push_str(&figure(f)?);
        }
        html.push_str("</section>");
    }
    html.push_str("</body></html>\n");
    let path = dir.join("index.html");
    sgdlab::io::write_atomic(&path, html.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
