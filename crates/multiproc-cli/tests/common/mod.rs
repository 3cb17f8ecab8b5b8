pub(crate) mod hostile;
