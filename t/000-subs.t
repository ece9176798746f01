#!/usr/bin/env perl
# Unit tests of the subscription cache without nginx (t/subs_test.c): a
# worker killed with SIGKILL in the middle of a cache update, over and
# over, leaves a cache that is consistent (or rebuilt) and still works.
# Built on nginx's own slab, shmtx and rbtree (t/nginx-core/) against the
# headers that make build configured; TAP.  About 10 s.

use strict;
use warnings;

my $build = $ENV{PRESENCE_BUILD} || 'build';
my $bin = "$build/subs-test";
my @inc = map { ('-I', "$build/nginx/$_") } qw(src/core src/event src/os/unix objs);

if (system($ENV{CC} || 'cc', qw(-O2 -g -Wall -Werror -Wno-unused-parameter),
           @inc, '-o', $bin, 't/subs_test.c',
           map { "t/nginx-core/$_.c" } qw(ngx_slab ngx_shmtx ngx_rbtree)) != 0)
{
    print "Bail out! t/subs_test.c does not compile (make build first)\n";
    exit 1;
}

exec $bin or die "exec $bin: $!";
