package aggregate

// WideQuerier returns a Querier that reads the wide rollups for every
// query, the path of every read before the narrow rollups: the tests and
// benchmarks compare the two.
func WideQuerier(q *Querier) *Querier {
	w := *q
	w.wide = true
	return &w
}

// LevelTables are the wide and narrow rollup tables, minute to month.
var LevelTables, NarrowTables = levelTables[levelMinute:], narrowTables[levelMinute:]
