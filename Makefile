# Thin wrappers over util/: make (build), make run / stop, make test
# [T=t/001-heartbeat.t], make bench.

.PHONY: build deps run stop test bench services-start services-stop clean

build:
	util/build.sh

deps:
	util/deps.sh

run:
	util/run.sh

stop:
	util/stop.sh

test:
	T="$(T)" util/test.sh

bench:
	util/bench/heartbeat

services-start:
	util/services.sh start

services-stop:
	util/services.sh stop

clean:
	rm -rf build t/servroot*
