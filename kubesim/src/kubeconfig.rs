//! The kubeconfig kubesim writes for itself: one cluster `kubesim` at the server URL, a user
//! without credentials, and a current context with namespace `default`.

use std::path::Path;

/// The kubeconfig text for a server at `url` (`http://127.0.0.1:PORT`).
pub fn render(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {url}\n\
         contexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\n    namespace: default\n\
         current-context: kubesim\nusers:\n- name: kubesim\n  user: {{}}\npreferences: {{}}\n"
    )
}

/// Writes [`render`] to `path`, creating parent folders.
pub fn write(path: &Path, url: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, render(url))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kubeconfig_parses_as_yaml_with_the_server() {
        let text = super::render("http://127.0.0.1:1234");
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1234"
        );
        assert_eq!(v["contexts"][0]["context"]["namespace"], "default");
    }
}
