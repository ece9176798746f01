#!/usr/bin/env perl
# Unit tests of the presence table without nginx (t/table_test.c): expiry,
# a sweep lock left by a dead process, users lost off the wheel by a killed
# sweeper, and processes racing on the same users, one killed with SIGKILL.
# Compiled against the nginx headers that make build configured; TAP.

use strict;
use warnings;

my $build = $ENV{PRESENCE_BUILD} || 'build';
my $bin = "$build/table-test";
my @inc = map { ('-I', "$build/nginx/$_") } qw(src/core src/event src/os/unix objs);

if (system($ENV{CC} || 'cc', qw(-O2 -g -Wall -Wextra -Werror -Wno-unused-parameter),
           @inc, '-o', $bin, 't/table_test.c', 'src/ngx_http_presence_table.c') != 0)
{
    print "Bail out! t/table_test.c does not compile (make build first)\n";
    exit 1;
}

exec $bin or die "exec $bin: $!";
