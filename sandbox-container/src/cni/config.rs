//! Network config files: loading, validation, and the per-plugin execution
//! config derived from them.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::error::{ConfigError, Error, Result};

/// The `cniVersion`s we run. Their results share one shape (`ips`,
/// `interfaces`, `routes`, `dns`); 0.1.0 and 0.2.0 used another.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Config files larger than this are refused.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A validated network configuration list: one network, its plugins in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// Network name, injected into each plugin's config.
    pub name: String,
    /// Spec version, injected into each plugin's config.
    pub cni_version: String,
    /// `disableCheck`: CHECK succeeds without running the plugins.
    pub disable_check: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConfig>,
    /// The file it was loaded from, if any.
    pub source: Option<PathBuf>,
}

/// One plugin of a [`NetworkConfigList`].
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// `type`: the binary's file name.
    pub plugin_type: String,
    /// The capabilities it declares (`"capabilities": {"portMappings": true}`).
    pub capabilities: BTreeSet<String>,
    raw: Map<String, Value>,
}

impl NetworkConfigList {
    /// Loads the network config from `conf_dirs`, taken in order; within a
    /// dir, files ending `.conflist`, `.conf` or `.json` are tried in lexical
    /// order of their names, and the first one that parses and validates
    /// wins. Invalid files before it are logged and skipped.
    ///
    /// [`Error::NoConfig`] when there is no candidate file at all (missing
    /// dirs count as empty), [`Error::InvalidConfig`] (for the first
    /// candidate) when there are candidates but none is valid.
    pub fn load(conf_dirs: &[PathBuf]) -> Result<NetworkConfigList> {
        let mut first_error: Option<(PathBuf, ConfigError)> = None;
        for dir in conf_dirs {
            for path in candidates(dir) {
                match Self::from_file(&path) {
                    Ok(list) => {
                        if let Some((bad, e)) = &first_error {
                            warn!(
                                skipped = %bad.display(),
                                error = %e,
                                using = %path.display(),
                                "skipped invalid CNI config"
                            );
                        }
                        debug!(path = %path.display(), network = %list.name, "loaded CNI config");
                        return Ok(list);
                    }
                    Err(e) => {
                        if first_error.is_some() {
                            warn!(path = %path.display(), error = %e, "invalid CNI config");
                        } else {
                            first_error = Some((path, e));
                        }
                    }
                }
            }
        }
        match first_error {
            Some((path, source)) => Err(Error::InvalidConfig { path, source }),
            None => Err(Error::NoConfig {
                dirs: conf_dirs.to_vec(),
            }),
        }
    }

    /// Reads one file: `.conflist` as a list; `.conf` and `.json` as a single
    /// plugin config (wrapped into a list), or as a list if it has `plugins`.
    pub fn from_file(path: &Path) -> Result<NetworkConfigList, ConfigError> {
        let file = fs::File::open(path).map_err(ConfigError::Read)?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(ConfigError::Read)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge(MAX_CONFIG_BYTES));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(ConfigError::Json)?;
        let is_list =
            path.extension().is_some_and(|e| e == "conflist") || value.get("plugins").is_some();
        let mut list = if is_list {
            Self::from_list_value(value)?
        } else {
            Self::from_plugin_value(value)?
        };
        list.source = Some(path.to_path_buf());
        Ok(list)
    }

    /// Parses a network configuration list (`{"name", "cniVersion",
    /// "plugins": [...]}`).
    pub fn from_list_value(value: Value) -> Result<NetworkConfigList, ConfigError> {
        let Value::Object(mut obj) = value else {
            return Err(ConfigError::NotObject("network config"));
        };
        let name = string_field(&obj, "name")?;
        let cni_version = string_field(&obj, "cniVersion")?;
        let disable_check = match obj.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // 1.1.0 allows the string form.
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(_) => return Err(ConfigError::BadDisableCheck),
        };
        let plugins = match obj.remove("plugins") {
            Some(Value::Array(plugins)) if !plugins.is_empty() => plugins,
            _ => return Err(ConfigError::NoPlugins),
        };
        let plugins = plugins
            .into_iter()
            .enumerate()
            .map(|(index, p)| PluginConfig::from_value(index, p))
            .collect::<Result<Vec<_>, _>>()?;
        let list = NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins,
            source: None,
        };
        list.validate()?;
        Ok(list)
    }

    /// Parses a single plugin config (`{"name", "cniVersion", "type", ...}`)
    /// and wraps it into a one-plugin list.
    pub fn from_plugin_value(value: Value) -> Result<NetworkConfigList, ConfigError> {
        let Value::Object(obj) = value else {
            return Err(ConfigError::NotObject("network config"));
        };
        let name = string_field(&obj, "name")?;
        let cni_version = string_field(&obj, "cniVersion")?;
        let plugin = PluginConfig::from_value(0, Value::Object(obj))?;
        let list = NetworkConfigList {
            name,
            cni_version,
            disable_check: false,
            plugins: vec![plugin],
            source: None,
        };
        list.validate()?;
        Ok(list)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::BadName(self.name.clone()));
        }
        if !SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            return Err(ConfigError::UnsupportedVersion(self.cni_version.clone()));
        }
        Ok(())
    }

    /// The list as JSON (the form cached with a result, for DEL).
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), self.cni_version.clone().into());
        obj.insert("name".into(), self.name.clone().into());
        if self.disable_check {
            obj.insert("disableCheck".into(), true.into());
        }
        let plugins = self
            .plugins
            .iter()
            .map(|p| Value::Object(p.raw.clone()))
            .collect();
        obj.insert("plugins".into(), Value::Array(plugins));
        Value::Object(obj)
    }

    /// Whether `cniVersion` is at least `major.minor.patch`.
    pub(crate) fn version_at_least(&self, want: (u32, u32, u32)) -> bool {
        parse_version(&self.cni_version).is_some_and(|v| v >= want)
    }

    /// The config sent on stdin to `plugin`: its own config with `name` and
    /// `cniVersion` of the list, `capabilities` removed, `runtimeConfig` set
    /// to the capability arguments the plugin declares (when any is given),
    /// and `prevResult` when given.
    pub(crate) fn exec_config(
        &self,
        plugin: &PluginConfig,
        capability_args: &Map<String, Value>,
        prev_result: Option<&Value>,
    ) -> Value {
        let mut obj = plugin.raw.clone();
        obj.remove("capabilities");
        obj.insert("name".into(), self.name.clone().into());
        obj.insert("cniVersion".into(), self.cni_version.clone().into());
        let runtime_config: Map<String, Value> = capability_args
            .iter()
            .filter(|(k, _)| plugin.capabilities.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !runtime_config.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        match prev_result {
            Some(prev) => obj.insert("prevResult".into(), prev.clone()),
            None => obj.remove("prevResult"),
        };
        Value::Object(obj)
    }
}

impl PluginConfig {
    fn from_value(index: usize, value: Value) -> Result<PluginConfig, ConfigError> {
        let Value::Object(raw) = value else {
            return Err(ConfigError::NotObject("plugin config"));
        };
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err(ConfigError::MissingType { index }),
        };
        if !valid_plugin_type(&plugin_type) {
            return Err(ConfigError::BadType(plugin_type));
        }
        let capabilities = match raw.get("capabilities") {
            Some(Value::Object(caps)) => caps
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => BTreeSet::new(),
        };
        Ok(PluginConfig {
            plugin_type,
            capabilities,
            raw,
        })
    }
}

/// Finds the binary of plugin `plugin_type` in `bin_dirs`, in order: the
/// first regular file with an execute bit.
pub fn find_plugin(plugin_type: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if valid_plugin_type(plugin_type) {
        for dir in bin_dirs {
            let path = dir.join(plugin_type);
            if let Ok(meta) = fs::metadata(&path)
                && meta.is_file()
                && meta.permissions().mode() & 0o111 != 0
            {
                return Ok(path);
            }
        }
    }
    Err(Error::PluginNotFound {
        plugin: plugin_type.to_string(),
        dirs: bin_dirs.to_vec(),
    })
}

/// The config files of one dir, sorted by name.
fn candidates(dir: &Path) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %dir.display(), error = %e, "cannot read CNI conf dir");
            }
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
                && path.is_file()
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}

fn string_field(obj: &Map<String, Value>, key: &'static str) -> Result<String, ConfigError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ConfigError::Missing(key)),
    }
}

/// CNI's rule for network names and container IDs: a letter or digit, then
/// letters, digits, `_`, `.` or `-`.
pub(crate) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A plugin type is a plain file name: no `/`, not `.` or `..`, no NUL.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && t != "." && t != ".." && !t.contains(['/', '\0'])
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, value: &Value) {
        fs::write(dir.join(name), serde_json::to_vec(value).unwrap()).unwrap();
    }

    fn list(name: &str, types: &[&str]) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": types.iter().map(|t| json!({"type": t})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn cni_load_takes_lexically_first_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "30-c.conflist", &list("c", &["bridge"]));
        write(dir.path(), "20-b.conflist", &list("b", &["bridge"]));
        // Invalid (bad type), lexically first: skipped.
        write(dir.path(), "10-a.conflist", &list("a", &["../bridge"]));
        write(dir.path(), "00-ignored.txt", &list("x", &["bridge"]));
        let got = NetworkConfigList::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(got.name, "b");
        assert_eq!(got.source, Some(dir.path().join("20-b.conflist")));
    }

    #[test]
    fn cni_load_dirs_in_order_and_single_conf_wrapped() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        write(second.path(), "00-x.conflist", &list("x", &["bridge"]));
        write(
            first.path(),
            "50-single.conf",
            &json!({"cniVersion": "0.4.0", "name": "single", "type": "bridge",
                    "capabilities": {"portMappings": true, "bandwidth": false}}),
        );
        let dirs = [
            PathBuf::from("/nonexistent/crius-cni"),
            first.path().to_path_buf(),
            second.path().to_path_buf(),
        ];
        let got = NetworkConfigList::load(&dirs).unwrap();
        assert_eq!(got.name, "single");
        assert_eq!(got.cni_version, "0.4.0");
        assert_eq!(got.plugins.len(), 1);
        assert_eq!(got.plugins[0].plugin_type, "bridge");
        let caps: Vec<_> = got.plugins[0].capabilities.iter().cloned().collect();
        assert_eq!(caps, ["portMappings"]);
    }

    #[test]
    fn cni_load_no_config_and_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = [
            dir.path().to_path_buf(),
            PathBuf::from("/nonexistent/crius"),
        ];
        match NetworkConfigList::load(&dirs) {
            Err(Error::NoConfig { dirs: got }) => assert_eq!(got, dirs),
            other => panic!("want NoConfig, got {other:?}"),
        }
        fs::write(dir.path().join("10-broken.conflist"), b"{not json").unwrap();
        write(
            dir.path(),
            "20-slash.conflist",
            &list("n", &["/usr/bin/bridge"]),
        );
        match NetworkConfigList::load(&dirs) {
            Err(Error::InvalidConfig { path, source }) => {
                assert_eq!(path, dir.path().join("10-broken.conflist"));
                assert!(matches!(source, ConfigError::Json(_)), "{source:?}");
            }
            other => panic!("want InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn cni_config_validation() {
        let bad = |v: Value| NetworkConfigList::from_list_value(v).unwrap_err();
        assert!(matches!(bad(list("n", &["a/b"])), ConfigError::BadType(t) if t == "a/b"));
        assert!(matches!(bad(list("n", &[".."])), ConfigError::BadType(_)));
        assert!(matches!(bad(list("n", &["."])), ConfigError::BadType(_)));
        assert!(matches!(bad(list("n", &[])), ConfigError::NoPlugins));
        assert!(matches!(bad(list("../n", &["x"])), ConfigError::BadName(_)));
        assert!(matches!(
            bad(list("", &["x"])),
            ConfigError::Missing("name")
        ));
        assert!(matches!(
            bad(json!({"name": "n", "plugins": [{"type": "x"}]})),
            ConfigError::Missing("cniVersion")
        ));
        assert!(matches!(
            bad(json!({"name": "n", "cniVersion": "0.2.0", "plugins": [{"type": "x"}]})),
            ConfigError::UnsupportedVersion(_)
        ));
        assert!(matches!(
            bad(json!({"name": "n", "cniVersion": "1.0.0", "plugins": [{"ipam": {}}]})),
            ConfigError::MissingType { index: 0 }
        ));
        assert!(matches!(
            bad(json!({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": 3}]})),
            ConfigError::MissingType { index: 0 }
        ));
        assert!(matches!(bad(json!([1])), ConfigError::NotObject(_)));
        let e = bad(list("n", &["../x"]));
        assert_eq!(
            e.to_string(),
            "plugin type \"../x\" is not a plain file name"
        );
    }

    #[test]
    fn cni_exec_config_injects_fields() {
        let list = NetworkConfigList::from_list_value(json!({
            "cniVersion": "1.0.0",
            "name": "net",
            "plugins": [
                {"type": "bridge", "name": "ignored", "bridge": "br0", "prevResult": {"stale": 1}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false},
            ],
        }))
        .unwrap();
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 80}]));
        caps.insert("bandwidth".into(), json!({}));
        let first = list.exec_config(&list.plugins[0], &caps, None);
        assert_eq!(
            first,
            json!({"type": "bridge", "name": "net", "cniVersion": "1.0.0", "bridge": "br0"})
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let second = list.exec_config(&list.plugins[1], &caps, Some(&prev));
        assert_eq!(
            second,
            json!({"type": "portmap", "name": "net", "cniVersion": "1.0.0", "snat": false,
                   "runtimeConfig": {"portMappings": [{"hostPort": 80}]},
                   "prevResult": prev})
        );
        // Round trip through the cached form.
        let again = NetworkConfigList::from_list_value(list.to_value()).unwrap();
        assert_eq!(again, list);
    }

    #[test]
    fn cni_versions() {
        assert_eq!(parse_version("1.0.0"), Some((1, 0, 0)));
        assert_eq!(parse_version("0.4"), Some((0, 4, 0)));
        assert_eq!(parse_version("x"), None);
        let mut list = NetworkConfigList::from_list_value(list("n", &["x"])).unwrap();
        assert!(list.version_at_least((0, 4, 0)));
        list.cni_version = "0.3.1".into();
        assert!(!list.version_at_least((0, 4, 0)));
    }

    #[test]
    fn cni_find_plugin() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("p"), b"").unwrap(); // not executable: skipped
        fs::write(b.path().join("p"), b"").unwrap();
        fs::set_permissions(b.path().join("p"), fs::Permissions::from_mode(0o755)).unwrap();
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin("p", &dirs).unwrap(), b.path().join("p"));
        assert!(matches!(
            find_plugin("q", &dirs),
            Err(Error::PluginNotFound { plugin, .. }) if plugin == "q"
        ));
        assert!(find_plugin("../p", &dirs).is_err());
    }
}
