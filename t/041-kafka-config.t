# Kafka: the test broker and its helpers (t/lib/PresenceKafka.pm, with kcat
# alone), and the presence_kafka directive: what it refuses, with the
# reason, and a configuration that starts.  The producer itself is tested
# in t/042-kafka-producer.t.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceKafka;

no_shuffle();

# the broker: written and read back, refused while down, back after up
{
    my $topic = "kcat-$$-" . time;

    Test::More::ok(kafka_produce($topic, [1001, '{"a":1}'], [1002, 'two words'],
                                 [1001, '{"a":2}']),
                   'kcat produces to the mock broker');
    my @m = kafka_messages($topic);
    Test::More::is(scalar @m, 3, 'three messages read back');
    Test::More::is_deeply([map { $_->[1] } grep { $_->[0] eq '1001' } @m],
                          ['{"a":1}', '{"a":2}'],
                          'key and value, in order per key');

    kafka_down();
    Test::More::ok(!kafka_produce($topic, [1003, 'lost']),
                   'producing fails while the broker is down');
    Test::More::ok(!eval { kafka_messages($topic); 1 },
                   'reading fails while the broker is down');

    kafka_up();
    Test::More::ok(kafka_produce($topic, [1003, 'back']),
                   'producing works again after kafka_up');
    @m = kafka_messages($topic);
    Test::More::is_deeply([map { "$_->[0]=$_->[1]" } grep { $_->[0] eq '1003' } @m],
                          ['1003=back'], 'only the message produced when up');
}

$ENV{TEST_NGINX_KAFKA_BROKERS} ||= kafka_brokers();

run_tests();

__DATA__

=== TEST 1: a valid configuration starts
--- http_config
    presence_zone name=presence size=4m;
    presence_kafka brokers=$TEST_NGINX_KAFKA_BROKERS topic=presence
                   queue=1000 linger.ms=20 compression.codec=lz4;
--- config
    location = /t { return 204; }
--- request
GET /t
--- error_code: 204
--- no_error_log
[error]
[emerg]



=== TEST 2: brokers are required
--- http_config
    presence_kafka topic=presence;
--- config
    # api
--- must_die
--- error_log
"brokers=" is required



=== TEST 3: an unknown librdkafka property
--- http_config
    presence_kafka brokers=127.0.0.1:9092 no.such.property=1;
--- config
    # api
--- must_die
--- error_log
invalid parameter "no.such.property=1": No such configuration property: "no.such.property"



=== TEST 4: a bad value of a librdkafka property
--- http_config
    presence_kafka brokers=127.0.0.1:9092 linger.ms=soon;
--- config
    # api
--- must_die
--- error_log
invalid parameter "linger.ms=soon": Invalid value for configuration property "queue.buffering.max.ms"



=== TEST 5: properties that do not go together (acks=1 with idempotence)
--- http_config
    presence_kafka brokers=127.0.0.1:9092 acks=1;
--- config
    # api
--- must_die
--- error_log
invalid librdkafka configuration: `acks` must be set to `all` when `enable.idempotence` is true



=== TEST 6: the brokers are given with brokers=
--- http_config
    presence_kafka brokers=127.0.0.1:9092 bootstrap.servers=127.0.0.1:9093;
--- config
    # api
--- must_die
--- error_log
invalid parameter "bootstrap.servers=127.0.0.1:9093": use "brokers="



=== TEST 7: the queue is given with queue=
--- http_config
    presence_kafka brokers=127.0.0.1:9092 queue.buffering.max.messages=5;
--- config
    # api
--- must_die
--- error_log
invalid parameter "queue.buffering.max.messages=5": use "queue="



=== TEST 8: log.queue is the module's
--- http_config
    presence_kafka brokers=127.0.0.1:9092 log.queue=false;
--- config
    # api
--- must_die
--- error_log
invalid parameter "log.queue=false": set by the module



=== TEST 9: a bad queue size
--- http_config
    presence_kafka brokers=127.0.0.1:9092 queue=0;
--- config
    # api
--- must_die
--- error_log
invalid parameter "queue=0"



=== TEST 10: a topic name Kafka would refuse
--- http_config
    presence_kafka brokers=127.0.0.1:9092 topic=presence/changes;
--- config
    # api
--- must_die
--- error_log
invalid parameter "topic=presence/changes"



=== TEST 11: an empty broker list
--- http_config
    presence_kafka brokers=;
--- config
    # api
--- must_die
--- error_log
invalid parameter "brokers="



=== TEST 12: not a name=value pair
--- http_config
    presence_kafka brokers=127.0.0.1:9092 idempotent;
--- config
    # api
--- must_die
--- error_log
invalid parameter "idempotent"



=== TEST 13: twice
--- http_config
    presence_kafka brokers=127.0.0.1:9092;
    presence_kafka brokers=127.0.0.1:9092;
--- config
    # api
--- must_die
--- error_log
"presence_kafka" directive is duplicate



=== TEST 14: the stores need the presence table
--- http_config
    presence_kafka brokers=127.0.0.1:9092;
--- config
    location = /t { return 204; }
--- must_die
--- error_log
"presence_redis" and "presence_kafka" need a "presence_zone"
