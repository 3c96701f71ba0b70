//! OCI images as system container roots: `keel_oci` opens and unpacks
//! them; here the image config's defaults go into the stored definition.

pub use keel_oci::*;

/// A definition's text with what the image runs added for the keys it
/// does not set: `command` (Entrypoint then Cmd, its program found in the
/// PATH), `env` (the image's, with Docker's PATH if it has none), `cwd`,
/// and `[user]` (by number or by name in the image's own files), worked
/// out by [`keel_oci::resolve`] as keel-init does for the person's
/// containers. `image` gives the image's files. Returns the text to store
/// in the image, or why the image cannot run.
pub fn resolve_text(
    text: &str,
    config: &RunConfig,
    image: &dyn ImageRoot,
) -> Result<String, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let def = keel_formats::container::ContainerDef::parse(text).map_err(|e| e.to_string())?;
    let has = |key: &str| table.contains_key(key);
    let given = Given {
        command: if has("command") {
            def.command.clone()
        } else {
            Vec::new()
        },
        env: has("env").then(|| def.env.clone()),
        set_env: Vec::new(),
        cwd: has("cwd").then(|| def.cwd.clone()),
        user: has("user").then(|| format!("{}:{}", def.user.uid, def.user.gid)),
    };
    let run = keel_oci::resolve(config, &given, image).map_err(|e| e.to_string())?;
    let list = |v: &[String]| {
        let items: Vec<String> = v
            .iter()
            .map(|s| toml::Value::String(s.clone()).to_string())
            .collect();
        format!("[{}]", items.join(", "))
    };
    let mut top = String::new();
    if !has("command") {
        top.push_str(&format!("command = {}\n", list(&run.command)));
    }
    if !has("env") {
        top.push_str(&format!("env = {}\n", list(&run.env)));
    }
    // `/`, where the image names no folder, is the definition's default.
    if !has("cwd") && run.cwd != "/" {
        top.push_str(&format!("cwd = {}\n", toml::Value::String(run.cwd)));
    }
    let tail = match run.user {
        Some((uid, gid)) if !has("user") => format!("\n[user]\nuid = {uid}\ngid = {gid}\n"),
        _ => String::new(),
    };
    if top.is_empty() && tail.is_empty() {
        return Ok(text.to_string());
    }
    Ok(format!(
        "# Defaults from the OCI image config, added by keel build.\n{top}\n{text}{tail}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_formats::container::ContainerDef;
    use std::path::Path;

    const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/hello"],"Cmd":["--greet","world"],"Env":["PATH=/bin","GREETING=hi"],"WorkingDir":"/data","User":"1000:1000"}}"#;

    /// An image with only these files.
    struct Files(&'static [&'static str]);

    impl ImageRoot for Files {
        fn exists(&self, path: &Path) -> bool {
            self.0.iter().any(|p| Path::new(p) == path)
        }
        fn read_text(&self, _: &Path) -> Option<String> {
            None
        }
    }

    #[test]
    fn the_config_fills_what_the_definition_leaves_out() {
        let config: keel_oci::ConfigBlob = serde_json::from_str(CONFIG).unwrap();
        let c = config.config;
        let text = "description = \"app\"\n[rootfs]\noci = \"app\"\n";
        let none = Files(&[]);
        let out = resolve_text(text, &c, &none).unwrap();
        let def = ContainerDef::parse(&out).unwrap();
        assert_eq!(def.command, ["/bin/hello", "--greet", "world"]);
        assert_eq!(def.env, ["PATH=/bin", "GREETING=hi"]);
        assert_eq!(def.cwd, "/data");
        assert_eq!((def.user.uid, def.user.gid), (1000, 1000));
        // What the definition says wins.
        let own =
            "command = [\"/bin/sh\"]\ncwd = \"/\"\n[user]\nuid = 5\n[rootfs]\noci = \"app\"\n";
        let def = ContainerDef::parse(&resolve_text(own, &c, &none).unwrap()).unwrap();
        assert_eq!(
            (def.command[0].as_str(), def.cwd.as_str(), def.user.uid),
            ("/bin/sh", "/", 5)
        );
        let named = RunConfig {
            user: Some("app".into()),
            ..c.clone()
        };
        assert!(resolve_text(text, &named, &none)
            .unwrap_err()
            .contains("no user \"app\" in the image's /etc/passwd"));
        assert!(resolve_text(text, &RunConfig::default(), &none)
            .unwrap_err()
            .contains("what to run"));
    }

    #[test]
    fn a_bare_command_is_found_in_the_image_s_path_as_docker_finds_it() {
        let c = RunConfig {
            cmd: Some(vec!["nginx".into(), "-g".into()]),
            ..RunConfig::default()
        };
        let text = "[rootfs]\noci = \"app\"\n";
        let image = Files(&["usr/sbin/nginx"]);
        let def = ContainerDef::parse(&resolve_text(text, &c, &image).unwrap()).unwrap();
        assert_eq!(def.command, ["/usr/sbin/nginx", "-g"]);
        assert_eq!(def.env, [keel_oci::DEFAULT_PATH], "Docker's PATH");
        assert_eq!((def.cwd.as_str(), def.user.uid), ("/", 0));
        // The definition's own env is its PATH.
        let own = "env = [\"PATH=/bin\"]\n[rootfs]\noci = \"app\"\n";
        let e = resolve_text(own, &c, &image).unwrap_err();
        assert_eq!(e, "\"nginx\" is not in the image's PATH (/bin)");
    }
}
