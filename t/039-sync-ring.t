#!/usr/bin/env perl
# Unit tests of the write-behind's ring (t/ring_test.c) without nginx:
# writers stopped (SIGSTOP) between their reservation and their write, or
# mid-write, skipped by the reader, the ring wrapping under them, then
# continued: nothing lost that is not counted in dropped, no entry torn;
# then writers stopped at random under a fast reader.  Compiled against the
# nginx headers that make build configured; TAP.

use strict;
use warnings;

my $build = $ENV{PRESENCE_BUILD} || 'build';
my $bin = "$build/ring-test";
my @inc = map { ('-I', "$build/nginx/$_") } qw(src/core src/event src/os/unix objs);

if (system($ENV{CC} || 'cc', qw(-O2 -g -Wall -Wextra -Werror -Wno-unused-parameter
           -DNGX_PRESENCE_RING_TEST=1), @inc, '-o', $bin, 't/ring_test.c',
           'src/ngx_http_presence_sync_ring.c') != 0)
{
    print "Bail out! t/ring_test.c does not compile (make build first)\n";
    exit 1;
}

exec $bin or die "exec $bin: $!";
