//! Map input: expanding the spec's `input` (files, directories, globs) into files, cutting them
//! into splits of about `split_size` bytes (`split_reader` reads their lines).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{TaskError, TaskResult};
use super::glob::{expand_glob, is_glob};

/// One input file and its size when the input was listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub size: u64,
}

/// A byte range of one input file: the input of one map task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub path: PathBuf,
    pub start: u64,
    pub length: u64,
}

/// Expands the spec's `input` entries in order: a file is itself, a directory is every regular
/// file below it (sorted by path), a glob (`*`, `?`, `[…]` in any component) is what it
/// matches, each expanded the same way. Names starting with `.` or `_` (such as `_SUCCESS`)
/// are skipped inside directories and by globs, as Hadoop does, but not when named. A file
/// reached twice is listed once. Anything missing is an error naming it.
pub fn expand_inputs(inputs: &[String]) -> TaskResult<Vec<InputFile>> {
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for input in inputs {
        let input_error = |reason: String| TaskError::Input {
            path: input.clone(),
            reason,
        };
        if !input.starts_with('/') {
            return Err(input_error("is not an absolute path".into()));
        }
        let matches = if is_glob(input) {
            let matches = expand_glob(input).map_err(|error| input_error(error.to_string()))?;
            if matches.is_empty() {
                return Err(input_error("the glob matches no file or directory".into()));
            }
            matches
        } else {
            vec![PathBuf::from(input)]
        };
        let mut found = Vec::new();
        for path in matches {
            add_files(&path, &mut found).map_err(|error| TaskError::Input {
                path: path.display().to_string(),
                reason: error.to_string(),
            })?;
        }
        for file in found {
            if seen.insert(file.path.clone()) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

fn add_files(path: &Path, found: &mut Vec<InputFile>) -> std::io::Result<()> {
    let metadata = fs::metadata(path)?;
    if metadata.is_file() {
        found.push(InputFile {
            path: path.to_owned(),
            size: metadata.len(),
        });
        return Ok(());
    }
    if !metadata.is_dir() {
        return Err(std::io::Error::other("is neither a regular file nor a directory"));
    }
    let mut below = Vec::new();
    walk_directory(path, &mut below)?;
    below.sort_by(|a, b| a.path.cmp(&b.path));
    found.extend(below);
    Ok(())
}

fn walk_directory(directory: &Path, found: &mut Vec<InputFile>) -> std::io::Result<()> {
    for entry in fs::read_dir(directory)? {
        let entry = entry?;
        if entry
            .file_name()
            .as_encoded_bytes()
            .first()
            .is_some_and(|first| matches!(first, b'.' | b'_'))
        {
            continue;
        }
        let path = entry.path();
        // Symbolic links to files are followed; links to directories are not (no cycles).
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk_directory(&path, found)?;
        } else if let Ok(metadata) = fs::metadata(&path)
            && metadata.is_file()
        {
            found.push(InputFile {
                path,
                size: metadata.len(),
            });
        }
    }
    Ok(())
}

/// Cuts files into splits of about `split_size` bytes. As in Hadoop, a file's last piece may be
/// up to 10 % larger rather than leave a tiny split; empty files have no split.
pub fn compute_splits(files: &[InputFile], split_size: u64) -> Vec<Split> {
    let split_size = split_size.max(1);
    let mut splits = Vec::new();
    for file in files {
        let mut start = 0;
        while start < file.size {
            let remaining = file.size - start;
            let length = if remaining as f64 <= split_size as f64 * 1.1 {
                remaining
            } else {
                split_size
            };
            splits.push(Split {
                path: file.path.clone(),
                start,
                length,
            });
            start += length;
        }
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_expand_directories_globs_and_name_missing_paths() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        fs::create_dir_all(root.join("books/deep")).unwrap();
        for (name, text) in [
            ("books/b.txt", "bb"),
            ("books/a.txt", "a"),
            ("books/deep/c.txt", "ccc"),
            ("books/_SUCCESS", ""),
            ("notes.md", "n"),
        ] {
            fs::write(root.join(name), text).unwrap();
        }
        let at = |relative: &str| format!("{}/{relative}", root.display());
        let files = expand_inputs(&[at("books"), at("*.md"), at("books/a.txt")]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|file| file.path.strip_prefix(root).unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["books/a.txt", "books/b.txt", "books/deep/c.txt", "notes.md"]);
        assert_eq!(files.iter().map(|file| file.size).collect::<Vec<_>>(), [1, 2, 3, 1]);
        let globbed = expand_inputs(&[at("b*/[a-b].t?t")]).unwrap();
        assert_eq!(globbed.len(), 2);
        let hidden = expand_inputs(&[at("books/*")]).unwrap();
        assert_eq!(hidden.len(), 3, "`*` skips _SUCCESS: {hidden:?}");

        let missing = expand_inputs(&[at("nope")]).unwrap_err().to_string();
        assert!(missing.contains("nope") && missing.contains("No such file"), "{missing}");
        let no_match = expand_inputs(&[at("*.csv")]).unwrap_err().to_string();
        assert!(no_match.contains("*.csv") && no_match.contains("matches no file"), "{no_match}");
    }

    #[test]
    fn the_last_split_takes_a_small_remainder() {
        let files = [InputFile {
            path: "/f".into(),
            size: 105,
        }];
        let lengths: Vec<_> = compute_splits(&files, 50).iter().map(|split| split.length).collect();
        assert_eq!(lengths, [50, 55]);
    }
}
