#!/usr/bin/env perl
# Unit tests of the presence table without nginx (t/table_test.c): expiry,
# devices, idle and the grace of a leave (test_devices),
# a sweep lock left by a dead process, users lost off the wheel by a killed
# sweeper, and processes racing on the same users, one killed with SIGKILL;
# pid locks of processes not ours (pid 1, EPERM, a reused pid) taken over;
# the audit met between a heartbeat's CAS and its push, also with a clock a
# turn of the wheel ahead of the heartbeat's; a self-linked bucket;
# a randomized stress of the wheel, about 12 s (PRESENCE_STRESS_SECONDS to
# run longer, PRESENCE_STRESS_SEED to replay the seed it prints).
# Compiled against the nginx headers that make build configured; TAP.

use strict;
use warnings;

my $build = $ENV{PRESENCE_BUILD} || 'build';
my $bin = "$build/table-test";
my @inc = map { ('-I', "$build/nginx/$_") } qw(src/core src/event src/os/unix objs);

# the table's test hooks compiled in: the tests interleave processes there
if (system($ENV{CC} || 'cc', qw(-O2 -g -Wall -Wextra -Werror -Wno-unused-parameter
                                -DNGX_PRESENCE_TABLE_HOOKS=1),
           @inc, '-o', $bin, 't/table_test.c', 'src/ngx_http_presence_table.c') != 0)
{
    print "Bail out! t/table_test.c does not compile (make build first)\n";
    exit 1;
}

exec $bin or die "exec $bin: $!";
