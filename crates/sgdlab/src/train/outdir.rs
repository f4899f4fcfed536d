//! A training experiment's output directory: what may already be in it, what `--force`
//! removes, the lock against other processes, and the temporary files a killed writer left.

use std::path::{Path, PathBuf};

use super::CHECKPOINT_FILE;
use crate::io::{DirLock, is_temp_name, remove_stale_temps};
use crate::{Error, Result};

/// The files an experiment writes at the top of its output directory (besides `runN/`):
/// [`Experiment::run`](super::Experiment::run) writes the first two, a front end the figures
/// and the page.
pub const OUTPUTS: [&str; 9] = [
    "metrics.csv",
    "summary.json",
    "loss.svg",
    "loss.png",
    "accuracy.svg",
    "accuracy.png",
    "noise.svg",
    "noise.png",
    "index.html",
];

/// What to do with an output directory that already holds a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutMode {
    /// Refuse it: the directory must be new or empty.
    #[default]
    New,
    /// Continue its runs from their checkpoints.
    Resume,
    /// Replace it: its run directories' checkpoints and the outputs are removed first
    /// (nothing else).
    Force,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, &e)
}

fn refused(why: String) -> Error {
    Error::Unsupported(why)
}

/// The run directories `runN` in `dir`, with their N: directories (not links to them) whose
/// name is exactly `run` and N in decimal (`run007` and `run+1` are someone else's).
pub(super) fn run_dirs(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let list = || io(format!("cannot list {}", dir.display()));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list())? {
        let entry = entry.map_err(list())?;
        let name = entry.file_name();
        let k = name
            .to_str()
            .and_then(|n| n.strip_prefix("run"))
            .and_then(|k| k.parse::<usize>().ok().filter(|n| n.to_string() == k));
        // DirEntry::file_type does not follow symbolic links.
        if let Some(k) = k
            && entry.file_type().map_err(list())?.is_dir()
        {
            out.push((k, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses a path the experiment would write that is a symbolic link (written through, it
/// would change a file elsewhere) or not what it should be (a run directory that is a file).
fn refuse_links(out: &Path, runs: usize) -> Result<()> {
    let link =
        |path: &Path| std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let refuse = |path: &Path| {
        refused(format!(
            "{} is a symbolic link: sgdlab writes a run's files only as regular files inside \
             --out, never through a link (remove it, or choose another --out)",
            path.display()
        ))
    };
    for name in OUTPUTS {
        let path = out.join(name);
        if link(&path) {
            return Err(refuse(&path));
        }
    }
    for k in 0..runs {
        let dir = out.join(format!("run{k}"));
        if link(&dir) {
            return Err(refuse(&dir));
        }
        if dir.exists() && !dir.is_dir() {
            return Err(refused(format!(
                "{} is not a directory: it is where run {k}'s checkpoint goes (remove it, or \
                 choose another --out)",
                dir.display()
            )));
        }
        let file = dir.join(CHECKPOINT_FILE);
        if link(&file) {
            return Err(refuse(&file));
        }
    }
    Ok(())
}

/// [`OutMode::Force`] on one run directory: removes what the experiment wrote there (its
/// checkpoint and temporary files), then the directory if nothing else is left in it. Files
/// sgdlab did not write are kept, and so is the directory that holds them (`note` says so).
fn remove_run_dir(dir: &Path, note: &dyn Fn(&str)) -> Result<()> {
    let ours = |name: &str| name == CHECKPOINT_FILE || is_temp_name(name);
    let list = || io(format!("cannot list {}", dir.display()));
    for entry in std::fs::read_dir(dir).map_err(list())? {
        let entry = entry.map_err(list())?;
        if ours(&entry.file_name().to_string_lossy())
            && !entry.file_type().map_err(list())?.is_dir()
        {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(io(format!("--force: cannot remove {}", path.display())))?;
        }
    }
    let empty = std::fs::read_dir(dir).map_err(list())?.next().is_none();
    if empty {
        std::fs::remove_dir(dir)
            .map_err(io(format!("--force: cannot remove {}", dir.display())))?;
    } else {
        note(&format!(
            "--force: kept {}: it holds files sgdlab did not write",
            dir.display()
        ));
    }
    Ok(())
}

/// Checks `out` before anything is loaded: a file where the directory should be, or a
/// missing directory to resume, is refused at once.
pub(super) fn check_out(out: &Path, mode: OutMode) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(refused(format!(
            "--out {}: is a file, not a run directory",
            out.display()
        )));
    }
    if mode == OutMode::Resume && !out.exists() {
        return Err(refused(format!(
            "--resume: {} does not exist",
            out.display()
        )));
    }
    Ok(())
}

/// Prepares `out` for `runs` runs: refuses a directory that already holds something unless
/// resuming or forcing (which removes earlier runs' checkpoints and the [`OUTPUTS`], and
/// nothing else), refuses symbolic links where the experiment writes, locks the directory
/// against other processes, and removes temporary files that a killed writer left behind.
pub(super) fn prepare(
    out: &Path,
    mode: OutMode,
    runs: usize,
    note: &dyn Fn(&str),
) -> Result<DirLock> {
    std::fs::create_dir_all(out).map_err(io(format!("cannot create {}", out.display())))?;
    let lock = DirLock::acquire(out)?;
    let list = || io(format!("cannot list {}", out.display()));
    let mut existing = Vec::new();
    for entry in std::fs::read_dir(out).map_err(list())? {
        let name = entry.map_err(list())?.file_name();
        let name = name.to_string_lossy();
        if name != DirLock::FILE && !is_temp_name(&name) {
            existing.push(name.into_owned());
        }
    }
    refuse_links(out, runs)?;
    let dirs = run_dirs(out)?;
    match mode {
        OutMode::Force => {
            for (_, dir) in &dirs {
                remove_run_dir(dir, note)?;
            }
            for name in OUTPUTS {
                let path = out.join(name);
                if path.is_file() {
                    std::fs::remove_file(&path)
                        .map_err(io(format!("--force: cannot remove {}", path.display())))?;
                }
            }
        }
        OutMode::New if !existing.is_empty() => {
            existing.sort();
            return Err(refused(format!(
                "--out {} already holds {} (e.g. {}): continue it with --resume, or replace it \
                 with --force",
                out.display(),
                if dirs.is_empty() { "files" } else { "a run" },
                existing
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        OutMode::Resume => {
            if let Some((k, _)) = dirs.iter().find(|(k, _)| *k >= runs) {
                return Err(refused(format!(
                    "--resume: {} holds run{k}, but this command has {runs} --opt; pass every \
                     --opt of the original command, in order (or start over with --force)",
                    out.display()
                )));
            }
        }
        OutMode::New => {}
    }
    let stale =
        |dir: &Path| remove_stale_temps(dir).map_err(io(format!("cannot clean {}", dir.display())));
    let mut removed = stale(out)?;
    for (_, dir) in run_dirs(out)? {
        removed += stale(&dir)?;
    }
    if removed > 0 {
        note(&format!(
            "removed {removed} temporary file(s) left by an interrupted run"
        ));
    }
    Ok(lock)
}
