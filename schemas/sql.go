package schemas

import "embed"

// SQL holds the versioned ClickHouse schema files, sql/NNNN_name.sql, that
// store.Migrate applies in version order. Each file is a text/template (see
// store.MigrateOptions for its data) holding one or more statements, each
// ending with ";" at the end of a line. Both engines run the same files;
// never edit a file that has been released, add a new one instead.
//
//go:embed sql/*.sql
var SQL embed.FS
