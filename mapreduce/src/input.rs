//! Map input: expanding the spec's `input` (files, directories, globs; local or `s3://`) into
//! files, cutting them into splits of about `split_size` bytes (`split_reader` reads their
//! lines).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use spindle_storage::{DataUrl, ObjectUrl, S3Settings, block_on};

use super::error::{TaskError, TaskResult};
use super::glob::{expand_glob, glob_matches, is_glob};

/// One input file (an absolute path or an `s3://` URL) and its size when the input was listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: String,
    pub size: u64,
}

/// A byte range of one input file: the input of one map task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// An absolute path or an `s3://` URL.
    pub path: String,
    pub start: u64,
    pub length: u64,
}

/// Expands the spec's `input` entries in order: a file is itself, a directory is every regular
/// file below it (sorted by path), a glob (`*`, `?`, `[…]` in any component) is what it
/// matches, each expanded the same way. Names starting with `.` or `_` (such as `_SUCCESS`)
/// are skipped inside directories and by globs, as Hadoop does, but not when named. A file
/// reached twice is listed once. Anything missing is an error naming it. On an object store,
/// a "directory" is a key prefix (`s3://b/in` is every object below `in/`, or the object `in`
/// itself), and globs match key components the same way; `s3` settings come from the job's env.
pub fn expand_inputs(inputs: &[String], s3: &S3Settings) -> TaskResult<Vec<InputFile>> {
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for input in inputs {
        let input_error = |reason: String| TaskError::Input {
            path: input.clone(),
            reason,
        };
        let url = DataUrl::parse(input).map_err(|error| input_error(error.reason))?;
        if let Some(object) = ObjectUrl::open(&url, s3).map_err(|error| input_error(error.to_string()))? {
            for file in block_on(expand_object_input(object)).map_err(input_error)? {
                if seen.insert(file.path.clone()) {
                    files.push(file);
                }
            }
            continue;
        }
        let input = &url.to_string();
        let matches = if is_glob(input) {
            let matches = expand_glob(input).map_err(|error| input_error(error.to_string()))?;
            if matches.is_empty() {
                return Err(input_error("the glob matches no file or directory".into()));
            }
            matches
        } else {
            vec![Path::new(input).to_owned()]
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

/// Hidden names (`.x`, and `_x` such as `_SUCCESS`), as Hadoop hides them.
fn hidden(name: &[u8]) -> bool {
    name.first().is_some_and(|first| matches!(first, b'.' | b'_'))
}

/// An object input: the object itself, or every object below the prefix (hidden names skipped
/// at any depth below it), or what a glob in its key matches (component by component, as on
/// a file system: the listing is of the prefix before the first glob component).
async fn expand_object_input(object: ObjectUrl) -> Result<Vec<InputFile>, String> {
    let key = object.key().to_owned();
    let entry = |found: &ObjectUrl, size: u64| InputFile {
        path: found.to_string(),
        size,
    };
    if !is_glob(&key) {
        // Listed first: a HEAD of a "directory" key is an error on some servers, not a 404.
        let below: Vec<InputFile> = object
            .list()
            .await
            .map_err(|error| error.to_string())?
            .into_iter()
            .filter(|found| {
                let relative = found.key.strip_prefix(&key).unwrap_or(&found.key);
                !relative.split('/').any(|part| hidden(part.as_bytes()))
            })
            .map(|found| entry(&object.at(&found.key), found.size))
            .collect();
        if !below.is_empty() {
            return Ok(below);
        }
        if !key.is_empty()
            && let Some(size) = object.size().await.map_err(|error| error.to_string())?
        {
            return Ok(vec![entry(&object, size)]);
        }
        return Err("no object has this key or prefix".into());
    }
    let components: Vec<&str> = key.split('/').collect();
    let literal = components.iter().take_while(|part| !is_glob(part)).count();
    let base = object.at(&components[..literal].join("/"));
    let pattern = &components[literal..];
    let mut matched: Vec<InputFile> = Vec::new();
    for found in base.list().await.map_err(|error| error.to_string())? {
        let relative: Vec<&str> = found.key.split('/').skip(literal).collect();
        if relative.len() < pattern.len() {
            continue;
        }
        // The pattern's components match the key's first ones; deeper keys are objects of
        // a matched "directory", whose own hidden names are skipped.
        let matches = pattern.iter().zip(&relative).all(|(pattern, name)| {
            let hidden_by_pattern = hidden(name.as_bytes()) && pattern.as_bytes().first() != name.as_bytes().first();
            !hidden_by_pattern && glob_matches(pattern.as_bytes(), name.as_bytes())
        });
        if matches && !relative[pattern.len()..].iter().any(|name| hidden(name.as_bytes())) {
            matched.push(entry(&object.at(&found.key), found.size));
        }
    }
    if matched.is_empty() {
        return Err("the glob matches no object".into());
    }
    Ok(matched)
}

fn add_files(path: &Path, found: &mut Vec<InputFile>) -> std::io::Result<()> {
    let metadata = fs::metadata(path)?;
    if metadata.is_file() {
        found.push(InputFile {
            path: path.display().to_string(),
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
        if hidden(entry.file_name().as_encoded_bytes()) {
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
                path: path.display().to_string(),
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
        let s3 = S3Settings::default();
        let files = expand_inputs(&[at("books"), at("*.md"), at("books/a.txt")], &s3).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|file| Path::new(&file.path).strip_prefix(root).unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["books/a.txt", "books/b.txt", "books/deep/c.txt", "notes.md"]);
        assert_eq!(files.iter().map(|file| file.size).collect::<Vec<_>>(), [1, 2, 3, 1]);
        let globbed = expand_inputs(&[at("b*/[a-b].t?t")], &s3).unwrap();
        assert_eq!(globbed.len(), 2);
        let hidden = expand_inputs(&[at("books/*")], &s3).unwrap();
        assert_eq!(hidden.len(), 3, "`*` skips _SUCCESS: {hidden:?}");

        let missing = expand_inputs(&[at("nope")], &s3).unwrap_err().to_string();
        assert!(missing.contains("nope") && missing.contains("No such file"), "{missing}");
        let no_match = expand_inputs(&[at("*.csv")], &s3).unwrap_err().to_string();
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
