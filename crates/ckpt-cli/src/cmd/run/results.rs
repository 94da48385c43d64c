//! `--results DIR`: each item's full stdout and stderr in files of its
//! own, as GNU parallel's `--results` keeps them.
//!
//! Layout: `DIR/<name>/stdout` and `DIR/<name>/stderr`, where `<name>` is
//! the item made safe for a file name by [`file_name`]. GNU parallel puts
//! `1/` (the input source) before the value; ckpt has one input, so the
//! level is left out. Each attempt rewrites the files: they hold the last
//! attempt's output, bytes as the command wrote them (no tag).

use std::fs::File;
use std::io;
use std::path::Path;

/// The longest `<name>` (file systems allow 255 bytes); longer ones keep
/// their start and end in a hash of the whole item.
const NAME_MAX: usize = 200;

/// The files of one item's attempt, created empty.
pub struct Files {
    pub stdout: File,
    pub stderr: File,
}

/// Creates `dir` if missing and checks that files can be created in it,
/// before the run touches the store.
/// A bad `DIR` is a usage error (exit 2), as any bad argument.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    let cannot = |e: io::Error| {
        crate::exit::Usage(format!(
            "--results: cannot create files in {}: {e}",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(cannot)?;
    // A name no item's file name can be (`file_name` escapes a leading `.`).
    let probe = dir.join(format!(".ckpt-probe-{}", std::process::id()));
    File::create(&probe).map_err(cannot)?;
    std::fs::remove_file(&probe).map_err(cannot)?;
    Ok(())
}

/// Creates (or empties) the files for `item` under `dir`.
pub fn create(dir: &Path, item: &str) -> io::Result<Files> {
    let at = dir.join(file_name(item));
    std::fs::create_dir_all(&at)?;
    Ok(Files {
        stdout: File::create(at.join("stdout"))?,
        stderr: File::create(at.join("stderr"))?,
    })
}

/// `item` as one safe path component: ASCII letters, digits, `.`, `-`,
/// `_`, `,`, `+`, `=` and `@` stay; every other byte (`/`, `%`, spaces,
/// control characters, non-ASCII) becomes `%XX`, as in a URL, so distinct
/// items get distinct names and the name reads back; a name that would be
/// `.`, `..` or start with `-` or `.` has its first byte escaped too. A
/// name over [`NAME_MAX`] bytes keeps its first 150 bytes (whole `%XX`s),
/// then `~` (never otherwise in a name) and a 64-bit FNV-1a hash of the
/// whole item in hex.
pub fn file_name(item: &str) -> String {
    let mut name = String::with_capacity(item.len());
    for (i, b) in item.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b"-_.,+=@".contains(&b);
        let leading = i == 0 && (b == b'.' || b == b'-');
        if plain && !leading {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.is_empty() {
        return "%".into();
    }
    if name.len() > NAME_MAX {
        // The name is ASCII; the cut must not split a %XX.
        let mut cut = 150;
        while name[..cut].rfind('%').is_some_and(|p| p + 3 > cut) {
            cut -= 1;
        }
        name.truncate(cut);
        name.push_str(&format!("~{:016x}", fnv1a(item.as_bytes())));
    }
    name
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_safe_component_and_read_back() {
        assert_eq!(file_name("a.csv"), "a.csv");
        assert_eq!(file_name("a/b c"), "a%2Fb%20c");
        assert_eq!(file_name(".."), "%2E.");
        assert_eq!(file_name(".hidden"), "%2Ehidden");
        assert_eq!(file_name("-rf"), "%2Drf");
        assert_eq!(file_name("50%"), "50%25");
        assert_eq!(file_name("é\n"), "%C3%A9%0A");
        // `%` is escaped, so an item spelled like another's name differs.
        assert_ne!(file_name("a%2Fb"), file_name("a/b"));
    }

    #[test]
    fn long_names_keep_their_start_and_a_hash_of_the_whole() {
        let a = format!("{}a", "/".repeat(300));
        let b = format!("{}b", "/".repeat(300));
        let (na, nb) = (file_name(&a), file_name(&b));
        assert!(na.len() <= NAME_MAX, "{na}");
        assert_ne!(na, nb, "items that differ only at the end");
        // Cut between whole %XX: 150 bytes hold 50 of them.
        assert!(na.starts_with(&"%2F".repeat(50)));
        assert_eq!(na.len(), 150 + 1 + 16);
    }
}
