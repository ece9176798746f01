# What docker/ and docker/k8s ship, checked without a Docker engine:
# docker-compose config, nginx -t of every nginx configuration of the
# repository (conf/nginx.conf as util/run.sh renders it, the node and the LB
# of docker/ with their paths and hosts made local), a node started from
# what docker/entrypoint.sh renders, the image's health check against it,
# the schema of sql/ applied twice, the Dockerfile's packages against the
# libraries the module links, and the Kubernetes manifests.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Cwd ();
use File::Path ();
use HTTP::Tiny ();
use Time::HiRes ();
use YAML::XS ();
use PresenceTest qw(psql);
use PresenceDeploy;

my $P = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-deploy';
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
my $dsn = $PresenceTest::PG_DSN;
my $nginx = $PresenceDeploy::NGINX;

system('rm', '-rf', $root);
File::Path::make_path($root);

sub nginx_t {
    my ($dir, $name) = @_;
    my $out = `$nginx -t -p $dir/ -c $dir/nginx.conf 2>&1`;
    ok($? == 0 && $out =~ /test is successful/, "nginx -t: $name")
        or diag($out);
}


# 1. docker-compose.yml

{
    my $out = `docker-compose -f docker/docker-compose.yml config 2>&1`;
    is($?, 0, "docker-compose config") or diag($out);
    my $c = eval { YAML::XS::Load($out) } || {};
    my $s = $c->{services} || {};

    is_deeply([sort keys %$s], [qw(kafka lb postgres presence1 presence2 redis)],
              "compose: the stores, two nodes and the LB");
    like($s->{postgres}{image} // '', qr/^postgres:15\b/, "compose: PostgreSQL 15");
    ok((grep { /\/sql:\/docker-entrypoint-initdb\.d\b/ }
        @{ $s->{postgres}{volumes} || [] }),
       "compose: sql/ is PostgreSQL's init directory");
    like($s->{redis}{image} // '', qr/^redis:/, "compose: Redis");
    my $k = $s->{kafka}{environment} || {};
    like($k->{KAFKA_PROCESS_ROLES} // '', qr/controller/,
         "compose: Kafka in KRaft mode (its own controller)");
    ok(!(grep { /ZOOKEEPER/ } keys %$k), "compose: no ZooKeeper");
    for my $n (qw(presence1 presence2)) {
        is($s->{$n}{command}[0], 'node', "compose: $n is a node");
        ok($s->{$n}{read_only}, "compose: $n has a read-only root");
    }
    is($s->{lb}{command}[0], 'lb', "compose: lb runs the LB");
    is($s->{lb}{ports}[0]{target}, 8080, "compose: lb is published");
}


# 2. nginx -t of every shipped configuration

{
    # conf/nginx.conf, rendered as util/run.sh does
    my $dir = "$root/conf";
    File::Path::make_path("$dir/logs", "$dir/tmp");
    open my $f, '>', "$dir/secret" or die; print $f "x" x 32; close $f;
    my $conf = slurp('conf/nginx.conf');
    my %v = (MODULE_DIR => $PresenceDeploy::MODULE_DIR, PREFIX => $dir,
             PG_DSN => $dsn, PORT => $P, HTML => Cwd::abs_path('conf/html'),
             REDIS_PORT => $redis_port,
             KAFKA_BROKERS => $ENV{TEST_NGINX_KAFKA_BROKERS} || '127.0.0.1:9092');
    $conf =~ s/\@(\w+)\@/$v{$1} \/\/ die "conf\/nginx.conf: \@$1\@ unknown"/ge;
    open $f, '>', "$dir/nginx.conf" or die; print $f $conf; close $f;
    nginx_t($dir, 'conf/nginx.conf');

    render_node(dir => "$root/node", port => $P, pg_dsn => $dsn,
                redis_port => $redis_port);
    nginx_t("$root/node", 'docker/nginx-node.conf');

    render_lb(dir => "$root/lb", port => $P, nodes => [$P + 1, $P + 2]);
    nginx_t("$root/lb", 'docker/nginx-lb.conf');

    my $cm = YAML::XS::LoadFile('docker/k8s/configmap.yaml');
    File::Path::make_path("$root/k8s");
    open $f, '>', "$root/k8s/node.conf" or die;
    print $f $cm->{data}{'nginx-node.conf'} // ''; close $f;
    render_node(src => "$root/k8s/node.conf", dir => "$root/k8s", port => $P,
                pg_dsn => $dsn, redis_port => $redis_port);
    nginx_t("$root/k8s", 'docker/k8s/configmap.yaml');

    my @confs = sort(glob('conf/*.conf'), glob('docker/*.conf'));
    is_deeply(\@confs, ['conf/nginx.conf', 'docker/nginx-lb.conf',
                        'docker/nginx-node.conf'],
              "every nginx configuration of the repository was tested");
}


# 3. docker/entrypoint.sh renders a node that works, and the image's
# health check sees it

{
    my $dir = "$root/entry";
    my ($pg_port) = $dsn =~ /port=(\d+)/;
    my ($pg_db) = $dsn =~ /dbname=(\S+)/;

    local %ENV = (%ENV, PRESENCE_PREFIX => $dir, PRESENCE_CONF_DIR => 'docker',
                  PRESENCE_RENDER_ONLY => 1, PRESENCE_PG_HOST => 'localhost',
                  PRESENCE_PG_PORT => $pg_port, PRESENCE_PG_DB => $pg_db,
                  PRESENCE_REDIS_HOST => 'localhost',
                  PRESENCE_REDIS_PORT => $redis_port,
                  PRESENCE_KAFKA => $ENV{TEST_NGINX_KAFKA_BROKERS}
                                    || '127.0.0.1:9092');

    # a password nginx's and libpq's quoting must both carry
    {
        local $ENV{PRESENCE_PG_PASSWORD} = q{p'a\\s"s|&};
        is(system('sh', 'docker/entrypoint.sh', 'node'), 0,
           "entrypoint renders a node");
        my ($arg) = slurp("$dir/nginx.conf")
                    =~ /^\s*presence_postgres\s+"((?:[^"\\]|\\.)*)"/m;
        (my $nginx_value = $arg // '') =~ s/\\(["'\\])/$1/g;
        like($nginx_value, qr/^host=127\.0\.0\.1 port=$pg_port /,
             "entrypoint: localhost resolved to an address");
        like($nginx_value, qr/ password='p\\'a\\\\s"s\|&' /,
             "entrypoint: the password quoted for libpq inside nginx's quotes");
    }

    is(system('sh', 'docker/entrypoint.sh', 'node'), 0,
       "entrypoint renders a node (password presence)");
    render_node(src => "$dir/nginx.conf", dir => $dir, port => $P,
                metrics_port => $P + 1, pg_dsn => 'unused',
                redis_port => $redis_port);
    nginx_t($dir, 'the node docker/entrypoint.sh rendered');

    psql("TRUNCATE users, users_subscribers RESTART IDENTITY CASCADE;");
    nginx_start($dir, $P);
    my $r = HTTP::Tiny->new(timeout => 5)->post(
        "http://127.0.0.1:$P/v1/users",
        { content => '{"name":"deploy"}' });
    is($r->{status}, 201, "the rendered node reaches PostgreSQL: POST /v1/users")
        or diag($r->{content});

    my $m = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:" . ($P + 1)
                                               . "/metrics")->{content} // '';
    like($m, qr/^presence_heartbeats_total \d+$/m,
         "the metric of the HPA's rule is on /metrics");
    like($m, qr/^presence_online_users \d+$/m, "and presence_online_users");

    {
        local $ENV{PRESENCE_HEALTH_PORT} = $P + 1;
        is(system('bash docker/healthcheck.sh 2>/dev/null'), 0,
           "the image's health check passes on a running node");
        nginx_stop($dir);
        isnt(system('bash docker/healthcheck.sh 2>/dev/null'), 0,
             "and fails when it is gone");
    }
    my @bad = grep { /\[(?:error|crit|alert|emerg)\]/ }
              split /\n/, slurp("$dir/error.log");
    ok(!@bad, "no error in its log") or diag(join "\n", grep { defined } @bad[0 .. 4]);
}


# 3b. presence_redis beside nchan, as docker/nginx-node.conf has it: nchan
# exports the symbols of its own copy of hiredis; the module keeps its
# hiredis private (config), or the workers die on their first connection

{
    my $dir = "$root/redis";
    render_node(dir => $dir, port => $P, pg_dsn => $dsn,
                redis_port => $redis_port);
    like(slurp("$dir/nginx.conf"), qr/^\s*presence_redis\s/m,
         'the node config writes to Redis');
    nginx_t($dir, 'the node with presence_redis');
    nginx_start($dir, $P);
    Time::HiRes::sleep(1.5);
    nginx_stop($dir);
    my $crashes = () = slurp("$dir/error.log") =~ /exited on signal/g;
    is($crashes, 0, "presence_redis and nchan in one nginx: no worker dies");
}


# 4. the schema of sql/, applied twice, as the image's initdb does once
# (into a schema of its own: a fresh database needs a superuser)

{
    my $sql = "SET client_min_messages = warning;\n"
            . "DROP SCHEMA IF EXISTS deploy_check CASCADE;\n"
            . "CREATE SCHEMA deploy_check;\n"
            . "SET search_path = deploy_check, public;\n";
    for my $round (1, 2) {
        $sql .= slurp($_) for sort glob 'sql/*.sql';
    }
    ok(eval { psql($sql); 1 }, "sql/*.sql applied twice") or diag($@);

    my $out = `psql -X -At '$dsn' -c "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'deploy_check'" 2>&1`;
    chomp $out;
    is($out, 'users_pkey,users_subscribers_pkey,users_subscribers_user_id_t_idx,'
             . 'users_user_name_lower_key,users_user_name_trgm_idx',
       "the tables' indexes, once each");
    $out = `psql -X -q '$dsn' -c "SET search_path = deploy_check, public" -c "INSERT INTO users (user_name) VALUES ('Ann'), ('ann')" 2>&1`;
    like($out, qr/users_user_name_lower_key/, "names unique case-insensitively");
    psql("SET client_min_messages = warning;\nDROP SCHEMA deploy_check CASCADE;");
}


# 5. the Dockerfile

{
    my $df = slurp('docker/Dockerfile');
    my @from = $df =~ /^FROM\s+(\S+)/mg;
    is(scalar @from, 2, "Dockerfile: two stages");
    like($df, qr/^ARG DEBIAN=debian:bookworm$/m, "Dockerfile: on debian:bookworm");

    my ($build, $run) = split /^FROM \$\{DEBIAN\}\s*$/m, (split /AS build/, $df, 2)[1];
    for my $p (qw(nginx-dev libpq-dev libjansson-dev libssl-dev
                  libhiredis-dev librdkafka-dev)) {
        like($build, qr/\b\Q$p\E\b/, "build stage installs $p");
    }
    like($build, qr/conf_flags.*--add-dynamic-module.*modules/s,
         "build stage: Debian's conf_flags, --add-dynamic-module, make modules");
    unlike($run // '', qr/\b[\w.+]+-dev\b/, "runtime stage: no -dev package");
    like($run // '', qr/\bnginx libnginx-mod-nchan\b/, "runtime: nginx and nchan");
    like($run // '', qr/^USER presence/m, "runtime: not root");
    like($run // '', qr/^HEALTHCHECK .*presence-healthcheck/ms, "runtime: HEALTHCHECK");

    # every library the module links comes from a package the runtime has
    my $so = "$PresenceDeploy::MODULE_DIR/ngx_http_presence_module.so";
    # (make test's AddressSanitizer build links libasan too)
    my @needed = grep { !/^libasan\./ }
                 `objdump -p $so` =~ /^\s*NEEDED\s+(\S+)/mg;
    ok(@needed, "objdump: the module's libraries");
    for my $lib (@needed) {
        next if $lib =~ /^(?:libc|libm|libpthread|libdl)\.so/;
        my ($pkg) = `dpkg -S '*/$lib' 2>/dev/null` =~ /^([^:]+)/;
        $pkg //= "(no package has $lib)";
        like($run // '', qr/\s\Q$pkg\E\s/, "runtime installs $lib ($pkg)");
    }

    # the build stage's recipe, run here: /src is this checkout, /build a
    # folder of the test (the same nginx-dev and libraries as the image's)
    my ($recipe) = $build =~ /^RUN (cp -r \/usr\/share\/nginx\/src \/build\b.*?[^\\])\n/ms;
    ok($recipe, "build stage: the recipe");
    my $bdir = "$root/dockerbuild";
    my $top = Cwd::abs_path('.');
    $recipe =~ s{\\\n}{ }g;
    $recipe =~ s{ /build\b}{ $bdir}g;
    $recipe =~ s{cd /build\b}{cd $bdir}g;
    $recipe =~ s{--add-dynamic-module=/src\b}{--add-dynamic-module=$top}g;
    $recipe =~ s{"\$\(nproc\)"}{2}g;
    my $out = `bash -euo pipefail -c '$recipe' 2>&1`;
    my $so2 = "$bdir/objs/ngx_http_presence_module.so";
    ok($? == 0 && -s $so2, "the build stage's recipe builds the module")
        or diag(substr($out, -2000));
    is_deeply([sort `objdump -p $so2 2>/dev/null` =~ /^\s*NEEDED\s+(\S+)/mg],
              [sort @needed], "linking what util/build.sh's module links");

    is(system('sh', '-n', 'docker/entrypoint.sh'), 0, "entrypoint.sh parses");
    is(system('bash', '-n', 'docker/healthcheck.sh'), 0, "healthcheck.sh parses");
}


# 6. the Kubernetes manifests

{
    my %k;
    for my $file (sort glob 'docker/k8s/*.yaml') {
        my @docs = eval { YAML::XS::LoadFile($file) };
        ok(!$@ && @docs, "YAML: $file") or diag($@);
        for my $d (@docs) {
            push @{ $k{$d->{kind}} }, $d if ref $d eq 'HASH' && $d->{kind};
        }
    }
    my ($dep) = @{ $k{Deployment} || [] };
    my ($svc) = @{ $k{Service} || [] };
    my ($hpa) = @{ $k{HorizontalPodAutoscaler} || [] };
    my ($pdb) = @{ $k{PodDisruptionBudget} || [] };
    my %cm = map { $_->{metadata}{name} => $_ } @{ $k{ConfigMap} || [] };
    my ($ing) = @{ $k{Ingress} || [] };

    ok($dep && $svc && $hpa && $pdb && $ing && $cm{'presence-nginx'},
       "k8s: Deployment, Service, HPA, PDB, Ingress, ConfigMap");

    my $labels = $dep->{spec}{template}{metadata}{labels};
    is_deeply($dep->{spec}{selector}{matchLabels}, $labels,
              "Deployment selects its pods");
    my $pod = $dep->{spec}{template}{spec};
    my ($c) = @{ $pod->{containers} };
    my %port = map { $_->{name} => $_->{containerPort} } @{ $c->{ports} };
    is_deeply(\%port, { http => 8080, metrics => 9145 }, "container ports");
    for my $probe (qw(readinessProbe livenessProbe)) {
        is($c->{$probe}{httpGet}{path}, '/healthz', "$probe on /healthz");
        is($port{ $c->{$probe}{httpGet}{port} } // '', 9145,
           "$probe on the metrics port");
    }
    ok($pod->{securityContext}{runAsNonRoot}
       && $pod->{securityContext}{runAsUser} == 10001, "pods run as presence");
    ok($c->{securityContext}{readOnlyRootFilesystem}, "read-only root");
    my %vol = map { $_->{name} => $_ } @{ $pod->{volumes} };
    my %mnt = map { $_->{mountPath} => $_->{name} } @{ $c->{volumeMounts} };
    is($vol{ $mnt{'/etc/presence/nginx-node.conf'} // '' }{configMap}{name},
       'presence-nginx', "the ConfigMap is the node's nginx.conf");
    ok($vol{ $mnt{'/var/lib/presence'} // '' }{emptyDir},
       "/var/lib/presence is writable");
    is($vol{ $mnt{'/run/secrets'} // '' }{secret}{items}[0]{path},
       'presence_secret', "the tokens' key where the config reads it");

    is($cm{'presence-nginx'}{data}{'nginx-node.conf'},
       slurp('docker/nginx-node.conf'),
       "the ConfigMap holds docker/nginx-node.conf as is "
       . "(else: sh docker/k8s/configmap.sh)");

    is_deeply($svc->{spec}{selector}, $labels, "Service selects the pods");
    my %sp = map { $_->{name} => $_->{targetPort} } @{ $svc->{spec}{ports} };
    is($sp{http}, 'http', "Service: http");

    is($hpa->{apiVersion}, 'autoscaling/v2', "HPA v2");
    is($hpa->{spec}{scaleTargetRef}{name}, $dep->{metadata}{name},
       "HPA scales the Deployment");
    my %m = map { $_->{type} => $_ } @{ $hpa->{spec}{metrics} };
    is($m{Resource}{resource}{name}, 'cpu', "HPA on CPU");
    my $custom = $m{Pods}{pods}{metric}{name} // '';
    ok($custom, "HPA on a per-pod custom metric ($custom)");
    my $rules = YAML::XS::Load($cm{'prometheus-adapter'}{data}{'config.yaml'});
    my ($rule) = grep { $_->{name}{as} eq $custom } @{ $rules->{rules} };
    ok($rule, "prometheus-adapter makes $custom");
    like($rule->{seriesQuery} // '', qr/^presence_\w+/,
         "from a metric of /metrics");

    is_deeply($pdb->{spec}{selector}{matchLabels}, $labels, "PDB selects the pods");
    ok(defined $pdb->{spec}{maxUnavailable} || defined $pdb->{spec}{minAvailable},
       "PDB bounds the disruption");

    is($ing->{metadata}{annotations}{'nginx.ingress.kubernetes.io/upstream-hash-by'},
       '$presence_user', "Ingress hashes on \$presence_user");
    my @lb_maps = slurp('docker/nginx-lb.conf')
                  =~ /^    (map \$(?:http_authorization|presence_\w+) \$presence_(?:bearer|route|user) \{.*?^    \})/msg;
    my @ing_maps = ($cm{'ingress-nginx-controller'}{data}{'http-snippet'} // '')
                   =~ /^(map .*?^\})/msg;
    s/^    //mg for @lb_maps;
    is(scalar @lb_maps, 3, "the LB's three maps of the key");
    is_deeply(\@ing_maps, \@lb_maps, "the Ingress's key is the LB's");
}

done_testing();
