#!/usr/bin/env perl
# Unit tests of the resume ring (t/resume_test.c) without nginx: what a
# resuming stream is given on its own channel is not given again by a
# later resume from an id of that second, and what it may not have had
# (part of its batch, a batch forgotten) is given again, never taken as
# seen.  Compiled against the nginx headers that make build configured;
# TAP.

use strict;
use warnings;

my $build = $ENV{PRESENCE_BUILD} || 'build';
my $bin = "$build/resume-test";
my @inc = map { ('-I', "$build/nginx/$_") } qw(src/core src/event src/os/unix objs);

if (system($ENV{CC} || 'cc', qw(-O2 -g -Wall -Wextra -Werror -Wno-unused-parameter),
           @inc, '-o', $bin, 't/resume_test.c') != 0)
{
    print "Bail out! t/resume_test.c does not compile (make build first)\n";
    exit 1;
}

exec $bin or die "exec $bin: $!";
