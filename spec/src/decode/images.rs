//! Decoders of image update policies (`imagePolicies`: tag policies and write-back).

use super::*;

pub(super) fn image_policy(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<ImagePolicy> {
    let mut o = Obj::new(cx, node, path, "an image policy")?;
    let n = o.req(cx, "name", name);
    let image = o.req(cx, "image", |cx, n, p| {
        checked(cx, n, p, check_image_repository)
    });
    let policy = o.req(cx, "policy", tag_policy);
    let write_back = o.req(cx, "writeBack", write_back);
    o.finish(cx);
    Some(ImagePolicy {
        name: n?,
        image: image?,
        policy: policy?,
        write_back: write_back?,
    })
}

/// `host[:port]/path` or `path`, lowercase path components, no tag or digest.
fn check_image_repository(s: &str) -> Result<String, String> {
    if s.contains('@') {
        return Err(format!(
            "image {s:?} has a digest; name the repository only"
        ));
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    if last.contains(':') {
        return Err(format!(
            "image {s:?} has a tag; name the repository only (the policy picks the tag)"
        ));
    }
    let (host, rest) = match s.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (Some(h), r),
        _ => (None, s),
    };
    let path_ok = !rest.is_empty()
        && rest.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        });
    let host_ok = host.is_none_or(|h| !h.is_empty() && !h.contains(char::is_whitespace));
    if path_ok && host_ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid image repository {s:?}: expected [host[:port]/]path with lowercase path components"
        ))
    }
}

fn tag_policy(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<TagPolicy> {
    let mut o = Obj::new(cx, node, path, "a tag policy")?;
    let semver = o.opt(cx, "semver", |cx, n, p| {
        checked(cx, n, p, SemverRange::parse)
    });
    let pattern = o.opt(cx, "pattern", |cx, n, p| {
        let mut po = Obj::new(cx, n, p, "a pattern policy")?;
        let regex = po.req(cx, "regex", |cx, n, p| checked(cx, n, p, Pattern::parse));
        let extract = po.opt(cx, "extract", string);
        let order = po
            .opt(cx, "order", |cx, n, p| {
                enumeration(
                    cx,
                    n,
                    p,
                    &[
                        ("alphabetical", TagOrder::Alphabetical),
                        ("numerical", TagOrder::Numerical),
                    ],
                )
            })
            .unwrap_or_default();
        if let (Some(re), Some(ex)) = (&regex, &extract) {
            for group in template_groups(ex) {
                let known = match group.parse::<usize>() {
                    Ok(i) => i < re.regex.captures_len(),
                    Err(_) => re.regex.capture_names().flatten().any(|g| g == group),
                };
                if !known {
                    cx.error(
                        po.pos(),
                        po.path(),
                        format!("\"extract\" refers to ${group}, which the regex does not capture"),
                    );
                }
            }
        }
        po.finish(cx);
        Some(PatternPolicy {
            regex: regex?,
            extract,
            order,
        })
    });
    let digest = o.opt(cx, "digest", |cx, n, p| {
        let mut d = Obj::new(cx, n, p, "a digest policy")?;
        let tag = d.req(cx, "tag", string);
        d.finish(cx);
        Some(DigestPolicy { tag: tag? })
    });
    let count = ["semver", "pattern", "digest"]
        .iter()
        .filter(|k| o.has(k))
        .count();
    if count != 1 {
        cx.error(
            o.pos(),
            o.path(),
            "a tag policy needs exactly one of \"semver\", \"pattern\" and \"digest\"",
        );
    }
    o.finish(cx);
    Some(TagPolicy {
        semver,
        pattern,
        digest,
    })
}

/// The group names or numbers referenced as `$name`, `${name}` or `$1` in an extract template.
fn template_groups(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            continue;
        }
        let mut name = String::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
        }
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn write_back(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<WriteBack> {
    let mut o = Obj::new(cx, node, path, "writeBack")?;
    let files = o.req(cx, "files", |cx, n, p| {
        let files = list(cx, n, p, repo_path);
        if files.is_empty() && matches!(&n.value, Value::Seq(items) if items.is_empty()) {
            cx.error(n.pos, p, "\"files\" must name at least one file");
        }
        Some(files)
    });
    let branch_check = |cx: &mut Cx, n: &Node, p: &Ptr<'_>| checked(cx, n, p, check_branch);
    let branch = o
        .opt(cx, "branch", branch_check)
        .unwrap_or_else(default_branch);
    let push_branch = o.opt(cx, "pushBranch", branch_check);
    let commit_message = o
        .opt(cx, "commitMessage", |cx, n, p| {
            checked(cx, n, p, |s| {
                crate::template::check_commit_message(s).map(|_| s.to_string())
            })
        })
        .unwrap_or_else(default_commit_message);
    let author = o.opt(cx, "author", |cx, n, p| {
        let mut a = Obj::new(cx, n, p, "an author")?;
        let nm = a.req(cx, "name", string);
        let email = a.req(cx, "email", |cx, n, p| {
            checked(cx, n, p, |s| {
                if s.contains('@') && !s.contains(['<', '>', '\n']) {
                    Ok(s.to_string())
                } else {
                    Err(format!("expected an email address, found {s:?}"))
                }
            })
        });
        a.finish(cx);
        Some(Author {
            name: nm?,
            email: email?,
        })
    });
    o.finish(cx);
    Some(WriteBack {
        files: files?,
        branch,
        push_branch,
        commit_message,
        author,
    })
}

/// A Git branch name (the rules of `git check-ref-format --branch`, simplified).
fn check_branch(s: &str) -> Result<String, String> {
    let bad = s.is_empty()
        || s.starts_with('-')
        || s.starts_with('/')
        || s.ends_with('/')
        || s.ends_with(".lock")
        || s.ends_with('.')
        || s.contains("..")
        || s.contains("//")
        || s.contains("@{")
        || s.bytes()
            .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b));
    if bad {
        Err(format!("invalid branch name {s:?}"))
    } else {
        Ok(s.to_string())
    }
}
