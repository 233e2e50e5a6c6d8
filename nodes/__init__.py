"""insitu subpackage."""
