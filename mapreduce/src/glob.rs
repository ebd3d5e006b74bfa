//! Glob patterns of the spec's `input`: `*`, `?` and `[…]` classes in any path component,
//! matched component by component against the file system, as a shell does.

use std::fs;
use std::path::PathBuf;

/// Whether `text` has glob metacharacters.
pub(crate) fn is_glob(text: &str) -> bool {
    text.bytes().any(|byte| matches!(byte, b'*' | b'?' | b'['))
}

/// Paths matching an absolute glob, sorted; a component without metacharacters must exist.
pub(crate) fn expand_glob(pattern: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut current = vec![PathBuf::from("/")];
    for component in pattern.split('/').filter(|component| !component.is_empty()) {
        let mut next = Vec::new();
        for base in &current {
            if !is_glob(component) {
                let candidate = base.join(component);
                if fs::symlink_metadata(&candidate).is_ok() {
                    next.push(candidate);
                }
                continue;
            }
            let Ok(entries) = fs::read_dir(base) else { continue };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.as_encoded_bytes();
                // Hidden names (`.x`, and `_x` such as `_SUCCESS`, as Hadoop hides them) match
                // only a pattern that starts with the same character.
                if let Some(&first @ (b'.' | b'_')) = name.first()
                    && component.as_bytes().first() != Some(&first)
                {
                    continue;
                }
                if glob_matches(component.as_bytes(), name) {
                    next.push(entry.path());
                }
            }
        }
        next.sort();
        current = next;
    }
    Ok(current)
}

/// Matches one path component against a pattern of `*`, `?`, `[abc]`, `[a-z]`, `[!a]`.
pub(crate) fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, name index it matched up to).
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p, name[n]),
            Some(&literal) if literal == name[n] => Some(p + 1),
            _ => None,
        };
        match (step, backtrack) {
            (Some(next), _) => {
                p = next;
                n += 1;
            }
            (None, Some((star_p, star_n))) => {
                p = star_p;
                n = star_n + 1;
                backtrack = Some((star_p, star_n + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

/// If `byte` is in the class starting at `pattern[open]` (`[`), the index after the class.
fn match_class(pattern: &[u8], open: usize, byte: u8) -> Option<usize> {
    let mut i = open + 1;
    let negated = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() && (first || pattern[i] != b']') {
        first = false;
        let low = pattern[i];
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&high| high != b']') {
            matched |= (low..=pattern[i + 2]).contains(&byte);
            i += 3;
        } else {
            matched |= low == byte;
            i += 1;
        }
    }
    if i >= pattern.len() {
        // No closing `]`: the `[` is a literal.
        return (byte == b'[').then_some(open + 1);
    }
    (matched != negated).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_components_match_like_a_shell() {
        for (pattern, name, expected) in [
            ("*.txt", "a.txt", true),
            ("*.txt", "a.txt.gz", false),
            ("a*b*c", "aXbYbZc", true),
            ("?", "", false),
            ("[!a]x", "bx", true),
            ("[!a]x", "ax", false),
            ("part-[0-9]*", "part-7", true),
            ("[", "[", true),
            ("*", "", true),
        ] {
            assert_eq!(glob_matches(pattern.as_bytes(), name.as_bytes()), expected, "{pattern} vs {name}");
        }
    }
}
