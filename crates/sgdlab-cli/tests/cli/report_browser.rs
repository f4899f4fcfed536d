//! The HTML reports of `verify`, `audit` and `train`, rendered in headless Chromium.
//!
//! Each page is checked to be self-contained (no script, no network reference), is rendered
//! to a screenshot, and fails the test if the screenshot is blank or Chromium logs a console
//! error. Without a Chromium binary the test is skipped with a message, unless
//! `SGDLAB_REQUIRE_BROWSER=1` (as in `.ci/run`, which installs Chromium), where it fails.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use assert_cmd::Command;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
}

fn sgdlab() -> Command {
    Command::cargo_bin("sgdlab").unwrap()
}

/// Fraction of pixels that are not (near) white, and whether the image has several colours.
fn ink(png_path: &Path) -> (f64, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let mut inked = 0usize;
    let mut colours = std::collections::HashSet::new();
    let total = pixels.len() / channels;
    for px in pixels.chunks_exact(channels) {
        if px[..3].iter().any(|&c| c < 200) {
            inked += 1;
        }
        if colours.len() < 64 {
            colours.insert((px[0] / 16, px[1] / 16, px[2] / 16));
        }
    }
    (inked as f64 / total as f64, colours.len())
}

fn check_page(browser: &Path, page: &Path, work: &Path) {
    let html = std::fs::read_to_string(page).unwrap();
    let lower = html.to_lowercase();
    for forbidden in [
        "<script",
        "src=\"http",
        "href=\"http",
        "@import",
        "url(http",
        "<link",
    ] {
        assert!(
            !lower.contains(forbidden),
            "{} contains {forbidden}",
            page.display()
        );
    }
    assert!(
        lower.contains("<svg"),
        "{} has no inline SVG",
        page.display()
    );
    let name = page
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let shot = work.join(format!("{name}.png"));
    let profile = work.join(format!("profile-{name}"));
    let out = Process::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1100,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chromium failed on {}: {log}",
        page.display()
    );
    for line in log.lines() {
        let console = line.contains("CONSOLE") || line.contains("Uncaught");
        assert!(
            !(console && (line.contains("Error") || line.contains("Uncaught"))),
            "console error on {}: {line}",
            page.display()
        );
    }
    assert!(shot.is_file(), "no screenshot of {}", page.display());
    let (inked, colours) = ink(&shot);
    assert!(
        inked > 0.01 && colours > 4,
        "{} rendered blank ({:.4} inked, {colours} colours)",
        page.display(),
        inked
    );
}

#[test]
fn reports_render_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("SGDLAB_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "SGDLAB_REQUIRE_BROWSER=1 but no chromium on PATH"
        );
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium to run this test)");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    sgdlab()
        .args(["verify", "--quick", "--report"])
        .arg(dir.join("verify"))
        .assert()
        .success();
    std::fs::write(dir.join("p.csv"), "0,0\n1,0\n0,1\n4,3\n-1,5\n").unwrap();
    sgdlab()
        .args([
            "audit",
            "--model",
            "points",
            "--opt",
            "normsgd:eps=0.1",
            "--opt",
            "adam:lr=0.001",
        ])
        .args(["--steps", "2000", "--burn-in", "200", "--data"])
        .arg(dir.join("p.csv"))
        .arg("--report")
        .arg(dir.join("audit"))
        .assert()
        .success();
    sgdlab()
        .args([
            "train",
            "--opt",
            "sgd:lr=0.1",
            "--opt",
            "adam:lr=0.01",
            "--epochs",
            "3",
            "--out",
        ])
        .arg(dir.join("train"))
        .assert()
        .success();
    for page in ["verify", "audit", "train"] {
        check_page(&browser, &dir.join(page).join("index.html"), dir);
    }
    // The verify page has a section and a figure for every problem.
    let html = std::fs::read_to_string(dir.join("verify/index.html")).unwrap();
    for p in 1..=7 {
        assert!(
            html.contains(&format!("<h2>Problem {p}:")),
            "problem {p} section"
        );
    }
    assert!(html.matches("<figure>").count() >= 7);
}
