# The two commands of README.md, and their helpers; the work is in util/.

.PHONY: build run stop test bench services-start services-stop clean

build:
	util/build.sh

run:
	util/run.sh

stop:
	util/stop.sh

test:
	util/test.sh

bench: build
	util/bench/run

services-start:
	util/services.sh start

services-stop:
	util/services.sh stop

clean:
	rm -rf build t/servroot
