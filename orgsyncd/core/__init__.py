"""The import core: parse -> validate -> (plan/apply live in ``store.importer``). No I/O but reading the
file it is handed, no database, no clock."""
