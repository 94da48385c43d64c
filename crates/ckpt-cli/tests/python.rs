//! The Python package's tests (`python/tests`, pytest), run by the
//! README's one test command, `cargo test --workspace`.
//!
//! What it does, in order:
//! 1. finds `python3` (3.9 or newer; `CKPT_PYTHON` names another); without
//!    one the test is skipped with the reason printed, unless
//!    `CKPT_REQUIRE_SERVICES=1`, when it fails;
//! 2. makes (or reuses) a virtual environment in `target/python-venv` and
//!    installs pytest, pytest-timeout and maturin into it from PyPI, only
//!    when they are missing, so reruns do not touch the network;
//! 3. installs the package the way a user does, `pip install ./python`,
//!    but with `MATURIN_PEP517_ARGS=--profile dev` and
//!    `CARGO_TARGET_DIR=target`, so maturin builds the extension with the
//!    debug profile into the workspace's target directory and reuses what
//!    `cargo test` compiled (a release build would take minutes);
//! 4. runs `python -m pytest python/tests` with `CKPT_BIN` naming this
//!    crate's `ckpt` binary (for the tests that call `ckpt status` and
//!    `ckpt retry`) and `CKPT_REQUIRE_SERVICES` passed through, and fails
//!    with pytest's output when pytest fails.
//!
//! Steps 2 and 3 hold an exclusive `flock` on `target/python-venv.lock`, so
//! two test processes (nextest runs them in parallel) never install into
//! the venv at once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    // crates/ckpt-cli -> the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root")
        .to_path_buf()
}

/// The workspace's target directory: `CARGO_TARGET_DIR` when cargo was
/// given one, else `target/` at the root. The `ckpt` binary lives in its
/// `debug/` (or another profile's) directory, so derive it from there.
fn target_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ckpt"));
    // <target>/<profile>/ckpt
    bin.parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .to_path_buf()
}

fn services_required() -> bool {
    std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(out.status.success(), "{what} failed\n{}", show(&out));
    out
}

/// The interpreter to build the venv from, if one of 3.9+ is there.
fn find_python() -> Result<String, String> {
    let python = std::env::var("CKPT_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .args(["-c", "import sys; print('%d %d' % sys.version_info[:2])"])
        .output()
        .map_err(|e| format!("{python} not found: {e}"))?;
    if !out.status.success() {
        return Err(format!("{python} does not run\n{}", show(&out)));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut parts = version.split(' ').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (3, 9) {
        return Err(format!(
            "{python} is {major}.{minor}; the package needs 3.9+"
        ));
    }
    Ok(python)
}

/// An exclusive lock on `path`, held until the returned file is dropped.
fn lock(path: &Path) -> File {
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    file
}

/// The venv's python, with pytest, pytest-timeout and maturin in it.
fn venv(python: &str, target: &Path) -> PathBuf {
    let dir = target.join("python-venv");
    let bin = dir.join("bin").join("python");
    let usable = Command::new(&bin)
        .args(["-c", "import pip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        // A venv left half-made (or made by a Python since removed).
        let _ = std::fs::remove_dir_all(&dir);
        run(
            Command::new(python).args(["-m", "venv"]).arg(&dir),
            "python3 -m venv (on Debian, apt-get install python3-venv)",
        );
    }
    let have = Command::new(&bin)
        .args(["-c", "import pytest, pytest_timeout, maturin"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        run(
            Command::new(&bin).args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "pytest",
                "pytest-timeout",
                "maturin>=1.7,<2",
            ]),
            "pip install pytest pytest-timeout maturin",
        );
    }
    bin
}

/// `pip install ./python`, as a user runs it, building the debug profile
/// into the shared target directory. `--no-build-isolation` uses the
/// venv's maturin rather than fetching one into a throwaway environment on
/// every run; otherwise this is the user's command.
fn install_package(py: &Path, root: &Path, target: &Path) {
    // maturin's build backend runs the `maturin` command: the venv's, as
    // when the venv is activated.
    let bin_dir = py.parent().expect("the venv's bin directory");
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    run(
        Command::new(py)
            .current_dir(root)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-build-isolation",
                "--force-reinstall",
                "--no-deps",
                "./python",
            ])
            .env("MATURIN_PEP517_ARGS", "--profile dev")
            .env("CARGO_TARGET_DIR", target)
            .env("PATH", path),
        "pip install ./python",
    );
}

#[test]
fn python_package_tests_pass() {
    let python = match find_python() {
        Ok(p) => p,
        Err(why) if services_required() => {
            panic!("CKPT_REQUIRE_SERVICES=1 but no usable Python: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let root = workspace_root();
    let target = target_dir();
    let py = {
        let _held = lock(&target.join("python-venv.lock"));
        let py = venv(&python, &target);
        install_package(&py, &root, &target);
        py
    };
    let out = Command::new(&py)
        .current_dir(&root)
        .args([
            "-m",
            "pytest",
            "python/tests",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--timeout=300",
        ])
        .env("CKPT_BIN", env!("CARGO_BIN_EXE_ckpt"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("CKPT_STORE")
        .output()
        .expect("start pytest");
    // Always shown (with --nocapture): which tests ran, which skipped and why.
    println!("{}", show(&out));
    assert!(out.status.success(), "pytest failed\n{}", show(&out));
}
