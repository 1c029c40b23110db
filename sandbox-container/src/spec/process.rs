//! The process: arguments, environment and working directory, merged from
//! the CRI request and the image config as containerd does.

use oci_spec::image::Config as ImageConfig;

use super::error::{SpecError, quote};

/// `PATH` when neither the image nor the request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn check_no_nul(s: &str, what: &str) -> Result<(), SpecError> {
    if s.contains('\0') {
        return Err(SpecError::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// The process arguments.
///
/// CRI `command` replaces the image `Entrypoint`, CRI `args` replace the
/// image `Cmd`; when `command` is set the image `Cmd` is not used. An image
/// `Entrypoint` of exactly `[""]` means no entrypoint (Docker's reset).
pub(crate) fn args(
    command: &[String],
    cri_args: &[String],
    image: Option<&ImageConfig>,
) -> Result<Vec<String>, SpecError> {
    let (mut out, rest): (Vec<String>, Vec<String>) = if command.is_empty() {
        let entrypoint = image
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default();
        let entrypoint = if entrypoint.as_slice() == [""] {
            Vec::new()
        } else {
            entrypoint
        };
        let rest = if cri_args.is_empty() {
            image.and_then(|c| c.cmd().clone()).unwrap_or_default()
        } else {
            cri_args.to_vec()
        };
        (entrypoint, rest)
    } else {
        (command.to_vec(), cri_args.to_vec())
    };
    out.extend(rest);
    if out.is_empty() {
        return Err(SpecError::invalid("no command specified"));
    }
    for a in &out {
        check_no_nul(a, "an argument")?;
    }
    Ok(out)
}

/// Sets `key=value` in `env`, replacing an existing entry of the same key
/// in place. An entry without `=` (from an image) removes the key.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    let pos = env
        .iter()
        .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
    match (pos, entry.contains('=')) {
        (Some(i), true) => env[i] = entry.to_string(),
        (Some(i), false) => {
            env.remove(i);
        }
        (None, true) => env.push(entry.to_string()),
        (None, false) => {}
    }
}

/// The environment: `PATH` (default), `HOSTNAME`, then the image's `Env`,
/// then the CRI envs, each replacing an earlier entry of the same key.
pub(crate) fn env(
    hostname: &str,
    image: Option<&ImageConfig>,
    cri_envs: &[crius_proto::cri::KeyValue],
) -> Result<Vec<String>, SpecError> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    check_no_nul(hostname, "the hostname")?;
    set_env(&mut env, &format!("HOSTNAME={hostname}"));
    for e in image.and_then(|c| c.env().as_ref()).into_iter().flatten() {
        check_no_nul(e, "an image environment variable")?;
        if e.is_empty() || e.starts_with('=') {
            continue;
        }
        set_env(&mut env, e);
    }
    for kv in cri_envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(SpecError::invalid(format!(
                "invalid environment variable name {}",
                quote(&kv.key)
            )));
        }
        check_no_nul(&kv.key, "an environment variable")?;
        check_no_nul(&kv.value, "an environment variable")?;
        set_env(&mut env, &format!("{}={}", kv.key, kv.value));
    }
    Ok(env)
}

/// The working directory: CRI `working_dir`, else the image `WorkingDir`,
/// else `/`. It must be absolute.
pub(crate) fn cwd(working_dir: &str, image: Option<&ImageConfig>) -> Result<String, SpecError> {
    let dir = if !working_dir.is_empty() {
        working_dir.to_string()
    } else {
        image
            .and_then(|c| c.working_dir().clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".to_string())
    };
    check_no_nul(&dir, "the working directory")?;
    if !dir.starts_with('/') {
        return Err(SpecError::invalid(format!(
            "working directory {} is not absolute",
            quote(&dir)
        )));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::KeyValue;
    use oci_spec::image::ConfigBuilder;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn image(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let mut b = ConfigBuilder::default();
        if let Some(ep) = ep {
            b = b.entrypoint(v(ep));
        }
        if let Some(cmd) = cmd {
            b = b.cmd(v(cmd));
        }
        b.build().unwrap()
    }

    #[test]
    fn command_merge_matrix() {
        let img = image(Some(&["/ep"]), Some(&["cmd1", "cmd2"]));
        let i = Some(&img);
        // neither: entrypoint + cmd
        assert_eq!(args(&[], &[], i).unwrap(), v(&["/ep", "cmd1", "cmd2"]));
        // args only: entrypoint + args
        assert_eq!(args(&[], &v(&["a"]), i).unwrap(), v(&["/ep", "a"]));
        // command only: image cmd NOT used
        assert_eq!(args(&v(&["/c"]), &[], i).unwrap(), v(&["/c"]));
        // both
        assert_eq!(args(&v(&["/c"]), &v(&["a"]), i).unwrap(), v(&["/c", "a"]));

        let cmd_only = image(None, Some(&["sh"]));
        assert_eq!(args(&[], &[], Some(&cmd_only)).unwrap(), v(&["sh"]));
        let reset = image(Some(&[""]), Some(&["sh"]));
        assert_eq!(args(&[], &[], Some(&reset)).unwrap(), v(&["sh"]));

        let ep_only = image(Some(&["/ep"]), None);
        assert_eq!(args(&[], &[], Some(&ep_only)).unwrap(), v(&["/ep"]));

        let none = image(None, None);
        let err = args(&[], &[], Some(&none)).unwrap_err();
        assert!(matches!(&err, SpecError::Invalid(m) if m == "no command specified"));
        assert!(args(&[], &[], None).is_err());
        assert!(args(&v(&["a\0b"]), &[], None).is_err());
    }

    #[test]
    fn env_merge() {
        let img = ConfigBuilder::default()
            .env(v(&["PATH=/img", "A=1", "B=2", "UNSETME"]))
            .build()
            .unwrap();
        let cri = vec![
            KeyValue {
                key: "B".into(),
                value: "3".into(),
            },
            KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
        ];
        let e = env("pod", Some(&img), &cri).unwrap();
        assert_eq!(e, v(&["PATH=/img", "HOSTNAME=pod", "A=1", "B=3", "C=x=y"]));

        let e = env("h", None, &[]).unwrap();
        assert_eq!(
            e,
            vec![format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h".to_string()]
        );

        let bad = vec![KeyValue {
            key: "A=B".into(),
            value: "1".into(),
        }];
        assert!(matches!(env("h", None, &bad), Err(SpecError::Invalid(_))));
        let bad = vec![KeyValue {
            key: String::new(),
            value: "1".into(),
        }];
        assert!(env("h", None, &bad).is_err());
        let bad = vec![KeyValue {
            key: "A".into(),
            value: "\0".into(),
        }];
        assert!(env("h", None, &bad).is_err());
    }

    #[test]
    fn working_dir() {
        let img = ConfigBuilder::default()
            .working_dir("/img")
            .build()
            .unwrap();
        assert_eq!(cwd("/cri", Some(&img)).unwrap(), "/cri");
        assert_eq!(cwd("", Some(&img)).unwrap(), "/img");
        assert_eq!(cwd("", None).unwrap(), "/");
        assert!(matches!(cwd("rel", None), Err(SpecError::Invalid(_))));
        let rel = ConfigBuilder::default().working_dir("rel").build().unwrap();
        assert!(cwd("", Some(&rel)).is_err());
    }
}
