package schemas

import "time"

// Window returns the effective MaxPast and MaxFuture (the defaults for
// unset fields): how far before and after the reference time an event's
// time may lie.
func (o Options) Window() (past, future time.Duration) {
	o = o.withDefaults()
	return o.MaxPast, o.MaxFuture
}
