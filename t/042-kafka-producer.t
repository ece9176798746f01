#!/usr/bin/env perl
# The Kafka producer (src/ngx_http_presence_kafka.c) against the mock broker,
# without nginx around it (t/kafka_test.c, TAP): delivery reports, the
# broker down and back, a full queue, a bounded stop; then what landed on
# the broker, read back with kcat: each message exactly once.
# Compiled against the nginx headers that make build configured.

use strict;
use warnings;

use lib 't/lib';
use IPC::Run ();
use Test::More;
use PresenceKafka;

my $build = $ENV{PRESENCE_BUILD} || 'build';
my $bin = "$build/kafka-test";
my @inc = map { ('-I', "$build/nginx/$_") } qw(src/core src/event src/os/unix objs);

if (system($ENV{CC} || 'cc', qw(-O2 -g -Wall -Wextra -Werror -Wno-unused-parameter),
           @inc, '-o', $bin, 't/kafka_test.c', 'src/ngx_http_presence_kafka.c',
           '-lrdkafka', '-lpthread') != 0)
{
    BAIL_OUT('t/kafka_test.c does not compile (make build first)');
}

my $pidfile = $ENV{PRESENCE_KAFKA_PIDFILE} || '.run/kafka/bootstrap.pid';
open my $fh, '<', $pidfile or BAIL_OUT("no Kafka mock broker: $pidfile");
chomp(my $mock = <$fh>);

my ($topic, $full) = ("producer-$$-" . time, "producer-full-$$-" . time);

# the harness's TAP, passed on as this file's tests
my ($out, $err) = ('', '');
IPC::Run::run([$bin, kafka_brokers(), $mock, $topic, $full], \undef, \$out,
              \$err, IPC::Run::timeout(120));
print STDERR $err if $err ne '';

my $plan;
for (split /\n/, $out) {
    if (/^(not )?ok \d+ - (.*)$/) {
        ok(!$1, $2);
    } elsif (/^1\.\.(\d+)$/) {
        $plan = $1;
    } else {
        note(s/^# //r);
    }
}

ok($plan, 'the harness ran to its end');

# what the broker holds
my %want = map { ("k$_" => qq({"v":"k$_"})) } 0 .. 199;
$want{"d$_"} = qq({"v":"d$_"}) for 0 .. 4;
$want{"f$_"} = qq({"v":"f$_"}) for 0 .. 49;

my @got = kafka_messages($topic);
my %got;
$got{$_->[0]}++ for @got;

is(scalar @got, scalar keys %want, 'as many messages on the broker as produced')
    or diag(join ' ', sort keys %got);
is_deeply({ map { ($_->[0] => $_->[1]) } @got }, \%want,
          'every key with its value');
is(scalar(grep { $_ != 1 } values %got), 0, 'none twice (idempotence)');

is(scalar(() = kafka_messages($full)), 0,
   'nothing from the queue that stop gave up on');

done_testing();
