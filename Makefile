# Thin wrappers over util/: make (build), make run / stop, make test
# [T=t/001-heartbeat.t], make test-asan (the suite again with the module
# built with AddressSanitizer; .ci/run runs it after make test), make bench (all the benchmarks), or one of
# bench-heartbeat, bench-table, bench-users, bench-events, bench-sync,
# bench-scale (issue 13's 5 M users on one node; not part of make bench:
# it takes some 15 minutes and 10 M rows in PostgreSQL), bench-cluster
# (issue 12's three nodes: reads, replica and SSE lag, a new node catching
# up 1 M users; not part of make bench: some 3-4 minutes, both cores);
# make fuzz [FUZZ_SECONDS=60 FUZZ_TARGETS="ids token"] runs the libFuzzer
# targets; make reliability (reloads and kill -9 under load, t/050) and
# make soak (100,000 users for PRESENCE_SOAK_SECONDS, 600 by default,
# t/051), both also part of make test.

.PHONY: build deps run stop test test-asan bench bench-heartbeat bench-table \
        bench-users bench-events bench-sync bench-scale bench-cluster \
        reliability soak services-start services-stop fuzz clean

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

test-asan:
	T="$(T)" PRESENCE_ASAN=only util/test.sh

reliability:
	T=t/050-reliability.t util/test.sh

soak:
	T=t/051-soak.t util/test.sh

bench: bench-table bench-heartbeat bench-users bench-events bench-sync

bench-heartbeat:
	util/bench/heartbeat

# the table alone, 5,000,000 users, 1% of them falling silent
bench-table: build
	$(CC) -O2 -g -Wall -Wextra -Wno-unused-parameter \
	    -I build/nginx/src/core -I build/nginx/src/event \
	    -I build/nginx/src/os/unix -I build/nginx/objs \
	    -o build/table-bench util/bench/table.c src/ngx_http_presence_table.c
	/usr/bin/time -v -o build/table-bench.time build/table-bench 5000000 1
	grep 'Maximum resident' build/table-bench.time

bench-users:
	util/bench/users

bench-events:
	util/bench/events

# 100,000 users online in one burst: until PostgreSQL, Redis, Kafka hold it
bench-sync:
	util/bench/sync

# 5,000,000 users kept online by gateway requests, warm-started from 10 M
# users and 10 M subscriptions in PostgreSQL, then restarted (a herd);
# sizes and times from SCALE_* (see util/bench/scale/run)
bench-scale: build
	util/bench/scale/run

# three nodes a, b, c and a single node on loopback (doc/bench-cluster.md);
# arguments and ports in util/bench/cluster/run
bench-cluster: build
	util/bench/cluster/run

fuzz:
	util/fuzz.sh

services-start:
	util/services.sh start

services-stop:
	util/services.sh stop

clean:
	rm -rf build t/servroot*
