//! OCI images as system container roots: `keel_oci` opens and unpacks
//! them; here the image config's defaults go into the stored definition.

pub use keel_oci::*;

/// A definition's text with the image config's defaults added for the keys
/// it does not set: `command` (Entrypoint then Cmd), `env`, `cwd`, and
/// `[user]` (the User, by number or by name in the image's own files,
/// which `read` gives). Returns the text to store in the image, or why the
/// image cannot run.
pub fn resolve(
    text: &str,
    config: &RunConfig,
    read: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<String, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut top = String::new();
    let list = |v: &[String]| {
        let items: Vec<String> = v
            .iter()
            .map(|s| toml::Value::String(s.clone()).to_string())
            .collect();
        format!("[{}]", items.join(", "))
    };
    if !table.contains_key("command") {
        let command: Vec<String> = config
            .entrypoint
            .iter()
            .flatten()
            .chain(config.cmd.iter().flatten())
            .cloned()
            .collect();
        if command.is_empty() {
            return Err(
                "neither `command` nor the image's Entrypoint or Cmd says what to run".into(),
            );
        }
        top.push_str(&format!("command = {}\n", list(&command)));
    }
    if let (false, Some(env)) = (table.contains_key("env"), &config.env) {
        top.push_str(&format!("env = {}\n", list(env)));
    }
    if let (false, Some(wd)) = (table.contains_key("cwd"), &config.working_dir) {
        if !wd.is_empty() {
            top.push_str(&format!("cwd = {}\n", toml::Value::String(wd.clone())));
        }
    }
    let mut tail = String::new();
    if let (false, Some(user)) = (table.contains_key("user"), &config.user) {
        if !user.is_empty() {
            let (uid, gid) = lookup_user(user, read)?;
            tail = format!("\n[user]\nuid = {uid}\ngid = {gid}\n");
        }
    }
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

    const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/hello"],"Cmd":["--greet","world"],"Env":["PATH=/bin","GREETING=hi"],"WorkingDir":"/data","User":"1000:1000"}}"#;

    #[test]
    fn the_config_fills_what_the_definition_leaves_out() {
        let config: keel_oci::ConfigBlob = serde_json::from_str(CONFIG).unwrap();
        let c = config.config;
        let text = "description = \"app\"\n[rootfs]\noci = \"app\"\n";
        let mut none = |_: &str| None;
        let out = resolve(text, &c, &mut none).unwrap();
        let def = keel_formats::container::ContainerDef::parse(&out).unwrap();
        assert_eq!(def.command, ["/bin/hello", "--greet", "world"]);
        assert_eq!(def.env, ["PATH=/bin", "GREETING=hi"]);
        assert_eq!(def.cwd, "/data");
        assert_eq!((def.user.uid, def.user.gid), (1000, 1000));
        // What the definition says wins.
        let own =
            "command = [\"/bin/sh\"]\ncwd = \"/\"\n[user]\nuid = 5\n[rootfs]\noci = \"app\"\n";
        let def =
            keel_formats::container::ContainerDef::parse(&resolve(own, &c, &mut none).unwrap())
                .unwrap();
        assert_eq!(
            (def.command[0].as_str(), def.cwd.as_str(), def.user.uid),
            ("/bin/sh", "/", 5)
        );
        let named = RunConfig {
            user: Some("app".into()),
            ..c.clone()
        };
        assert!(resolve(text, &named, &mut none)
            .unwrap_err()
            .contains("no user \"app\" in the image's /etc/passwd"));
        assert!(resolve(text, &RunConfig::default(), &mut none)
            .unwrap_err()
            .contains("what to run"));
    }
}
