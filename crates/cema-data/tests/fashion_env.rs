//! The environment variable override. Alone in its own test binary (its own process) because it
//! changes the process environment.

use cema_data::fashion_mnist::{self, Split, DIR_ENV};
use cema_data::idx;

#[test]
fn env_var_overrides_default_and_argument_overrides_env() {
    let env_dir = tempfile::tempdir().unwrap();
    let arg_dir = tempfile::tempdir().unwrap();
    let (i, l) = fashion_mnist::file_names(Split::Test);
    for (dir, label) in [(&env_dir, 1u8), (&arg_dir, 2u8)] {
        idx::write(&dir.path().join(i), &[1, 28, 28], &[0; 784], true).unwrap();
        idx::write(&dir.path().join(l), &[1], &[label], true).unwrap();
    }
    std::env::set_var(DIR_ENV, env_dir.path());
    assert_eq!(fashion_mnist::resolve_dir(None), env_dir.path());
    assert_eq!(fashion_mnist::load(None, Split::Test).unwrap().labels, [1]);
    assert_eq!(
        fashion_mnist::load(Some(arg_dir.path()), Split::Test)
            .unwrap()
            .labels,
        [2]
    );
    std::env::remove_var(DIR_ENV);
    assert_eq!(
        fashion_mnist::resolve_dir(None),
        std::path::Path::new(fashion_mnist::DEFAULT_DIR)
    );
}
