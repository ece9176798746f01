# The publish queue grows on demand up to queue= and no further (issue 10,
# item 15): one worker, no publisher listening (nothing leaves the queue),
# 4,000 users come online.  With queue=3000 the queue grows past its first
# 1,024 entries to 3,000 and the 1,000 oldest events are dropped; with the
# default bound (the zone's users, and more) none is.  A graceful stop
# then counts and logs the events the queue still holds.
#
# About 5 s.  Uses TEST_NGINX_SERVER_PORT (t/lib/PresenceMass.pm).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use PresenceMass;

my $USERS = 4_000;

for my $queue (3000, undef) {
    my $name = $queue ? "queue=$queue" : 'the default queue';
    my $m = mass_start(name => 'events-queue', users => $USERS,
                       first => 400_001, sample => 0, timeout => 60,
                       nchan => '32m', workers => 1, nobody => 1,
                       queue => $queue);

    my ($ok) = mass_heartbeats($m);
    is($ok, $USERS, "$name: $USERS heartbeats answered 204");

    my $mt = mass_wait(5, sub {
        ($_[0]{'presence_transitions_total{to="online"}'} // 0) == $USERS
    });
    is($mt->{presence_events_published_total}, 0, "$name: none published");
    is($mt->{presence_events_dropped_total}, $queue ? $USERS - $queue : 0,
       "$name: " . ($queue ? $USERS - $queue : 'none') . " dropped");

    my $log = mass_log($m);
    if ($queue) {
        like($log, qr/presence events: $queue events wait for the publisher, dropping the oldest/,
             "$name: the first drop is logged");
    } else {
        unlike($log, qr/dropping the oldest/, "$name: no drop logged");
    }
    unlike($log, qr/\[(alert|emerg)\]/, "$name: no alert");

    # a graceful stop: what the queue still holds is lost with the worker,
    # counted in presence_events_dropped_total and logged
    mass_stop($m);
    my $left = $queue // $USERS;
    like(mass_log($m), qr/\[warn\].*presence events: $left events not published at exit/,
         "$name: the $left events left at exit are counted and logged");
}

done_testing();
