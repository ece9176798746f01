# nchan out of shared memory loses no event (issue 10, item 15): with an
# nchan_shared_memory_size far too small for a burst, nchan answers 507 to
# the publisher (or 500, when an IPC alert between its workers finds no
# memory, or no answer at all), which keeps the event and publishes it
# again once nchan has freed the messages of some seconds ago.  9,000 users heartbeat at
# once and expire together (fewer than the 10,000 of the old queue: what
# is shown here is the 507, not the queue); 50 of them are each followed
# by a stream of their own, which gets the online and the offline event.
#
# About 40 s.  Uses TEST_NGINX_SERVER_PORT (t/lib/PresenceMass.pm).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Time::HiRes qw(sleep time);
use PresenceMass;

my $USERS = 9_000;
my $TIMEOUT = 2;                  # s, presence_heartbeat_timeout

# about 550 bytes a message: room for some 7,000 of the 18,000 events
my $m = mass_start(name => 'nchan-full', users => $USERS, first => 300_001,
                   sample => 50, timeout => $TIMEOUT, nchan => '4m');
is($m->{open}, 50, "50 streams open");

my ($ok, $load) = mass_heartbeats($m);
is($ok, $USERS, "$USERS heartbeats answered 204");

my $t1 = time;
my $mt = mass_wait(45, sub {
    my ($mt) = @_;
    return ($mt->{presence_events_published_total} // 0) >= 2 * $USERS
           && ($mt->{presence_online_users} // 1) == 0
           || ($mt->{presence_events_dropped_total} // 0) > 0;
});
diag sprintf "all published in %.1f s; nchan: %s", time - $t1, mass_nchan();

is($mt->{presence_online_users}, 0, "everybody offline");
is($mt->{presence_events_dropped_total}, 0, "no event dropped");
cmp_ok($mt->{presence_events_published_total}, '>=', 2 * $USERS,
       "every online and offline event published");
cmp_ok($mt->{presence_events_errors_total}, '>', 0,
       "nchan was out of memory (a 507 counts as an error)");

sleep 0.5;
# an online event retried by one worker can come after the offline event
# the sweeping worker published: clients order by seq
is_deeply(mass_streams($m, 1), [],
          "every sampled user's stream got online and offline (by seq)");

my $log = mass_log($m);
like($log, qr/presence events: the publisher answered 507 .* publishing it again later/,
     "the 507 is logged");
unlike($log, qr/\[(alert|emerg)\]/, "no alert in the error log");

done_testing();
