"""The processes of the delivery pipeline: receiver, worker, sweeper, rule reload, wiring."""
