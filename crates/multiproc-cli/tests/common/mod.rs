pub(crate) mod group;
pub(crate) mod hostile;
