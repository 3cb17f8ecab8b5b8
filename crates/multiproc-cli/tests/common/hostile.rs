//! Task texts that try to run code, and a directory to see whether they did; shared by the
//! worker tests on each backend.
#![allow(dead_code)]

/// Task texts that would run `touch pwned…` if pasted into a shell script unquoted.
pub(crate) const HOSTILE: &[&str] = &[
    "$(touch pwned1)",
    "`touch pwned2`",
    "x; touch pwned3",
    "y && touch pwned4 #",
    "'$(touch pwned5)'",
    "it's \"quoted\" \\ back",
    "two\nlines",
];

/// An empty directory of its own for a worker to run in, removed when the test ends.
pub(crate) struct WorkDir(pub(crate) std::path::PathBuf);

impl WorkDir {
    pub(crate) fn new(tag: &str) -> WorkDir {
        let dir = std::env::temp_dir().join(format!("mp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        WorkDir(dir)
    }

    /// What is in it: must stay empty, whatever the tasks said.
    pub(crate) fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
