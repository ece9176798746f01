package Test::Nginx::Util;

# The nginx side of a small work-alike of openresty/test-nginx: the
# configuration, the server root, starting, reloading (use_hup) and
# stopping nginx, and the loop over the blocks.  HTTP and the checks are
# in Test::Nginx::Socket.  See t/runner/README.md.

use strict;
use warnings;

use base 'Exporter';
use File::Find ();
use File::Path qw(make_path remove_tree);
use File::Spec ();
use List::Util qw(shuffle);
use POSIX qw(SIGQUIT SIGKILL SIGTERM SIGHUP SIGUSR1);
use Scalar::Util qw(looks_like_number);
use Time::HiRes qw(sleep);
use IO::Socket::INET ();
use Test::More ();

our @EXPORT = qw(
    run_tests run_test add_block_preprocessor bail_out env_to_nginx
    expand_env_in_text repeat_each workers worker_connections master_on
    master_off master_process_enabled log_level no_shuffle no_long_string
    no_root_location use_hup check_accum_error_log timeout server_name
    server_addr server_port server_root html_dir parse_time trim
    parse_headers error_log_data $ServerPort $ServerPortForClient
    $ServerAddr $ServerName $PidFile $ServRoot $ErrLogFile $RepeatEach
);

# the sections known here; a block using another one fails
our %KnownSections = map { $_ => 1 } qw(
    config http_config main_config post_main_config server_name init
    user_files request more_headers raw_request raw_request_middle_delay
    pipelined_requests error_code response_body response_body_like
    response_headers response_headers_like error_log no_error_log timeout
    wait must_die log_level skip_nginx ignore_response ONLY SKIP LAST
);

our $NginxBinary          = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $Workers              = 1;
our $WorkerConnections    = 64;
our $LogLevel             = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $ServerPort           = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $ServerPortForClient  = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
our $ServerAddr           = '127.0.0.1';
our $ServerName           = 'localhost';
our $Timeout              = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $Sleep                = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $NoShuffle            = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $UseHup               = $ENV{TEST_NGINX_USE_HUP};
our $CheckAccumErrLog     = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $ForceRestart         = $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} // 1;
our $RepeatEach           = 1;
our ($NoRootLocation, $NoLongString, @EnvToNginx, @BlockPreprocessors);
our ($NginxVersion, $PrevConfig, $ConfigVersion, $NginxStarted);
our ($ErrLogFilePos, $BlockLogStart) = (0, 0);
our $FirstTime = 1;
our ($RunTestHelper, $CheckErrorLog);    # set by Test::Nginx::Socket

our $ServRoot   = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";
our $PidFile    = "$LogDir/nginx.pid";
our $StderrFile = "$LogDir/nginx.stderr";
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

# settings; called without an argument they return the current value
sub workers (@)                { @_ ? ($Workers = shift) : $Workers }
sub worker_connections (@)     { @_ ? ($WorkerConnections = shift) : $WorkerConnections }
sub log_level (@)              { @_ ? ($LogLevel = shift) : $LogLevel }
sub timeout (@)                { @_ ? ($Timeout = shift) : $Timeout }
sub server_name (@)            { @_ ? ($ServerName = shift) : $ServerName }
sub server_addr (@)            { @_ ? ($ServerAddr = shift) : $ServerAddr }
sub server_port (@)            { @_ ? ($ServerPort = shift) : $ServerPort }
sub repeat_each (@)            { $RepeatEach = shift if @_; $RepeatEach }
sub master_on ()               { $MasterProcessEnabled = 'on' }
sub master_off ()              { $MasterProcessEnabled = 'off' }
sub master_process_enabled (@) {
    return $MasterProcessEnabled if !@_;
    return shift() ? master_on() : master_off();
}
sub no_shuffle ()              { $NoShuffle = 1 }
sub no_long_string ()          { $NoLongString = 1 }
sub no_root_location ()        { $NoRootLocation = 1 }
sub use_hup ()                 { $UseHup = 1 }
sub check_accum_error_log ()   { $CheckAccumErrLog = 1 }
sub server_root ()             { $ServRoot }
sub html_dir ()                { $HtmlDir }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub env_to_nginx (@)           { push @EnvToNginx, @_ }
sub bail_out (@)               { Test::More::BAIL_OUT(join '', @_) }

sub parse_time ($) {
    my $tm = shift;
    return $1 / 1000 if defined $tm && $tm =~ /^\s*([\d.]+)ms\s*$/;
    return defined $tm && $tm =~ /^\s*([\d.]+)s?\s*$/ ? $1 : $tm;
}

sub trim ($) {
    my $s = shift;
    return undef if !defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\s+/ /g;
    return $s;
}

# "Name: value" lines; "!Name" means the header must be absent (undef)
sub parse_headers ($) {
    my %headers;
    for my $line (grep { /\S/ } split /\n/, shift // '') {
        $line =~ s/^\s+|\s+$//g;
        if ($line =~ s/^!\s*//) {
            $headers{$line} = undef;
        } else {
            my ($key, $val) = split /\s*:\s*/, $line, 2;
            $headers{$key} = $val // '';
        }
    }
    return \%headers;
}

# $TEST_NGINX_FOO is replaced by that environment variable
sub expand_env_in_text ($$) {
    my ($text, $name) = @_;
    return $text if !defined $text || ref $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        $ENV{$1} // bail_out("$name - No environment $1 defined.\n")
    }eg;
    return $text;
}

# the part of error.log written since the previous call (all of it
# with check_accum_error_log)
sub error_log_data () {
    sleep $Sleep * 3;
    open my $in, '<', $ErrLogFile or return [];
    seek $in, $ErrLogFilePos, 0 if !$CheckAccumErrLog;
    my @lines = <$in>;
    $ErrLogFilePos = tell $in if !$CheckAccumErrLog;
    return \@lines;
}

# the last $n lines of error.log from offset $from, without [debug] ones
sub log_tail ($$) {
    my ($from, $n) = @_;
    open my $in, '<', $ErrLogFile or return "(no $ErrLogFile)\n";
    seek $in, $from, 0 if $from <= (-s $ErrLogFile || 0);
    my ($debug, @lines);
    while (my $line = <$in>) {
        # a [debug] entry may go on over several lines
        $debug = $line =~ /\[debug\]/ if $line =~ m{^\d{4}/\d\d/\d\d };
        push @lines, $line if !$debug;
    }
    splice @lines, 0, @lines - $n if @lines > $n;
    return join '', @lines;
}

sub is_running ($) {
    my $pid = shift;
    return 0 if !$pid || !kill 0, $pid;
    # a zombie nobody reaps (pid 1 in a container) counts as gone
    open my $in, '<', "/proc/$pid/stat" or return 1;
    return (<$in> // '') !~ /^\d+ \(.*\) Z/s;
}

sub get_pid_from_pidfile () {
    open my $in, '<', $PidFile or return undef;
    my $pid = <$in> // '';
    chomp $pid;
    return $pid =~ /^\d+$/ ? $pid : undef;
}

# our nginx, if running: the pid file may be stale and the pid reused
sub nginx_pid () {
    my $pid = get_pid_from_pidfile();
    return undef if !is_running($pid);
    open my $in, '<', "/proc/$pid/cmdline" or return $pid;
    return (<$in> // '') =~ /nginx/ ? $pid : undef;
}

sub wait_exit ($$) {
    my ($pid, $secs) = @_;
    for (my $t = 0; $t < $secs && is_running($pid); $t += 0.05) {
        sleep 0.05;
    }
    return !is_running($pid);
}

sub stop_nginx () {
    undef $NginxStarted;
    my $pid = nginx_pid() or return unlink $PidFile;
    kill $ENV{TEST_NGINX_FAST_SHUTDOWN} ? SIGTERM : SIGQUIT, $pid;
    return if wait_exit($pid, $Timeout);
    warn "WARNING: nginx $pid did not exit in ${Timeout}s; killing it\n";
    # a daemonized nginx leads its process group: take its workers too
    kill SIGKILL, getpgrp($pid) == $pid ? -$pid : $pid;
    wait_exit($pid, 1);
}

sub get_nginx_version () {
    my $out = `$NginxBinary -V 2>&1`;
    bail_out("Failed to run \"$NginxBinary -V\": " . ($out // $!)) if $?;
    $out =~ m{/(\d+)\.(\d+)\.(\d+)} or bail_out("Failed to parse \"nginx -V\": $out");
    return sprintf "%d.%03d%03d", $1, $2, $3;
}

# As the real one does: the server root keeps only what the harness itself
# makes there (conf/, html/, logs/, cache/, *_temp/, *_cache/).  Without
# use_hup the rest of the previous block's server root must be gone, and
# a file a test left there (its own output, say) bails out the whole file,
# as it does under the real one: keep such files in logs/, or outside the
# server root.  With use_hup every file (not directory) under it goes, but
# the pid file, unix sockets, keys and certificates of the running nginx.
sub setup_server_root ($) {
    my $first_time = shift;
    if (-d $ServRoot) {
        remove_tree($ConfDir, glob("$ServRoot/*_cache"), glob("$ServRoot/*_temp"));
        if ($UseHup) {
            File::Find::find({ bydepth => 1, no_chdir => 1, wanted => sub {
                return if -d $_;
                return if !$first_time && /(?:\bnginx\.pid|\.sock|\.crt|\.key)$/;
                unlink $_ or warn "Failed to remove $_\n";
            } }, $ServRoot);
        } else {
            remove_tree("$ServRoot/cache", $HtmlDir, $LogDir);
            rmdir $ServRoot or bail_out("Can't remove $ServRoot (not empty?): $!");
        }
    }
    for my $dir ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        -d $dir or mkdir $dir or bail_out("Failed to do mkdir $dir");
    }
    open my $out, '>', "$HtmlDir/index.html" or bail_out("Can't write $HtmlDir: $!");
    print $out '<html><head><title>It works!</title></head><body>It works!</body></html>';
}


# ">>> name" lines, each followed by the content of the file (in html/)
sub write_user_files ($) {
    my $block = shift;
    my $files = $block->user_files // return;
    ref $files and bail_out($block->name, " - user_files: only the string form is supported");
    my @files;
    for my $line (split /^/, $files) {
        if ($line =~ /^>>> (\S+)/) {
            push @files, [$1, ''];
        } elsif (@files) {
            $files[-1][1] .= $line;
        }
    }
    for my $file (@files) {
        my $path = $file->[0] =~ m{^/} ? $file->[0] : "$HtmlDir/$file->[0]";
        make_path($1) if $path =~ m{(.*)/};
        open my $out, '>', $path or bail_out($block->name, " - Cannot write $path: $!");
        print $out expand_env_in_text($file->[1], $block->name);
    }
}

sub write_config_file ($$) {
    my ($block, $config) = @_;
    my %s = map { $_ => expand_env_in_text($block->$_ // '', $block->name) }
            qw(http_config main_config post_main_config);
    my $server_name = $block->server_name // $ServerName;
    my $env = join '', map { "env $_;\n" } @EnvToNginx;
    # as the real one: TEST_NGINX_WORKER_USER, else root's workers as root
    my $user = defined $ENV{TEST_NGINX_WORKER_USER}
             ? "user $ENV{TEST_NGINX_WORKER_USER};"
             : $> == 0 ? 'user root;' : '';

    my $nginx_V = `$NginxBinary -V 2>&1` // '';
    my $temp_paths = join '', map { " ${_}_temp_path $ServRoot/${_}_temp;" }
        grep { $nginx_V !~ /--without-http_${_}_module/ && $s{http_config} !~ /\b${_}_temp_path\b/ }
        qw(client_body proxy fastcgi scgi uwsgi);

    my $root_location = $NoRootLocation ? '' : <<"_EOC_";
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_
    # use_hup: this answer tells when a reload is done
    my $hup_server = !$UseHup ? '' : <<"_EOC_";
    server {
        listen          $ServerPort;
        server_name     'Test-Nginx';
        location = /ver { return 200 '$ConfigVersion'; }
    }
_EOC_

    open my $out, '>', $ConfFile or bail_out("Can't open $ConfFile for writing: $!");
    print $out <<"_EOC_";
worker_processes  $Workers;
daemon on;
master_process $MasterProcessEnabled;
error_log $ErrLogFile $LogLevel;
pid       $PidFile;
$env
$s{main_config}

http {
    access_log $LogDir/access.log;$temp_paths

    default_type text/plain;
    keepalive_timeout  68000ms;

$s{http_config}
    server {
        listen          $ServerPort;
        server_name     '$server_name';
        client_max_body_size 30M;

        # Begin test case config...
$config
        # End test case config.

$root_location    }
$hup_server}

$s{post_main_config}

events {
    accept_mutex off;
    worker_connections  $WorkerConnections;
}
$user
_EOC_
}

# runs the nginx command line: its wait status and its stderr
sub run_nginx () {
    my @cmd = ($NginxBinary, '-p', "$ServRoot/", '-c', $ConfFile);
    push @cmd, '-e', $ErrLogFile if $NginxVersion >= 1.019005;
    my $pid = fork // bail_out("fork() failed: $!");
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', $StderrFile;
        exec @cmd or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    my $status = $?;
    open my $in, '<', $StderrFile or return ($status, '');
    return ($status, do { local $/; <$in> } // '');
}

# waits until nginx listens, without connecting: a connection would
# leave a line in error.log
sub wait_for_port ($) {
    my $hex = sprintf ':%04X ', $ServerPort;
    for (my $t = 0; $t < shift; $t += 0.05) {
        for my $file ('/proc/net/tcp', '/proc/net/tcp6') {
            open my $in, '<', $file or return 1;
            return 1 if grep { /^\s*\d+: [0-9A-F]+\Q$hex\E[0-9A-F:]+ 0A / } <$in>;
        }
        sleep 0.05;
    }
    return 0;
}

# use_hup: waits until the new configuration answers, 20 times in a row
sub wait_config_version ($) {
    my $name = shift;
    my $ok = 0;
    for (my $tries = 0; $tries < 400 && $ok < 20; $tries++) {
        my $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr, PeerPort => $ServerPort,
                                         Proto => 'tcp', Timeout => 2);
        my $resp = '';
        if ($sock) {
            print $sock "GET /ver HTTP/1.0\r\nHost: Test-Nginx\r\n\r\n";
            $resp = do { local $/; <$sock> } // '';
        }
        $ok = $resp =~ /\r\n\r\n\Q$ConfigVersion\E\z/ ? $ok + 1 : 0;
        sleep 0.02 if !$ok;
    }
    Test::More::fail("$name - nginx did not reload its configuration") if $ok < 20;
}

# (re)starts or reloads nginx for a block; false when the block must not
# send requests (a must_die block, or nginx did not start)
sub start_nginx ($$$) {
    my ($block, $config, $first_time) = @_;
    my $name = $block->name;
    $ConfigVersion = join '', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. 10;
    my $pid = nginx_pid();

    if ($UseHup && !$first_time && $pid) {
        setup_server_root($first_time);
        write_user_files($block);
        write_config_file($block, $config);
        kill SIGUSR1, $pid;    # reopen the (deleted) logs
        sleep $Sleep;
        kill SIGHUP, $pid;
        sleep $Sleep * 3;
        wait_config_version($name);
        ($NginxStarted, $BlockLogStart) = (1, 0);
        return 1;
    }

    stop_nginx();
    setup_server_root($first_time);
    write_user_files($block);
    write_config_file($block, $config);
    $BlockLogStart = 0;

    if (defined(my $must_die = $block->must_die)) {
        for my $i (0 .. $RepeatEach - 1) {
            my ($status, $stderr) = run_nginx();
            if ($status & 127) {
                Test::More::fail("$name - nginx died of signal " . ($status & 127));
            } elsif (looks_like_number($must_die)) {
                Test::More::is($status >> 8, $must_die, "$name - die with the expected exit code");
            } else {
                Test::More::isnt($status, 0, "$name - die as expected");
            }
            $ErrLogFilePos = 0;
            $CheckErrorLog->($block, $i, [split(/^/, $stderr), @{ error_log_data() }]);
            if ($status == 0) {
                warn "WARNING: $name - nginx must die but it does not; killing it\n";
                sleep 0.1;
                stop_nginx();
            }
        }
        return 0;
    }

    my ($status, $stderr);
    for (my $waited = 0; ; $waited += 0.2) {
        ($status, $stderr) = run_nginx();
        last if $status == 0 || $stderr !~ /Address already in use/ || $waited > 10;
        sleep 0.2;
    }
    if ($status != 0) {
        Test::More::fail("$name - nginx failed to start (exit code " . ($status >> 8) . ")");
        Test::More::diag("nginx stderr:\n$stderr");
        return 0;
    }
    $NginxStarted = 1;
    Test::More::diag("$name - nginx does not listen on port $ServerPort") if !wait_for_port(5);
    return 1;
}

# "--- skip_nginx: 2: < 1.21.0" -> (skip?, number of tests, reason)
sub nginx_version_skip ($$) {
    my ($name, $spec) = @_;
    $spec =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)(?:\s*:\s*(.*?))?\s*$/s
        or bail_out("$name - Invalid --- skip_nginx spec: $spec");
    my $ver = sprintf "%d.%03d%03d", $3, $4, $5;
    return (eval("$NginxVersion $2 $ver") ? 1 : 0, $1, $6 || "nginx version $2 $3.$4.$5");
}

sub run_tests () {
    $NginxVersion = get_nginx_version();
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;
    my @blocks = Test::Base::blocks();
    for my $block ($NoShuffle ? @blocks : shuffle @blocks) {
        $_->($block) for @BlockPreprocessors;
        $block->set_value(name => "$0 " . $block->name);
        run_test($block);
    }
}

sub run_test ($) {
    my $block = shift;
    my $name = $block->name;
    my $first_time = $FirstTime;
    undef $FirstTime;

    my @unknown = grep { !$KnownSections{$_} } @{ $block->_section_order || [] };
    if (@unknown) {
        Test::More::fail("$name - section(s) not supported by t/runner: @unknown");
        return;
    }

    my $config = expand_env_in_text($block->config, $name);
    local $LogLevel = $block->log_level || $LogLevel;
    local $UseHup = defined $block->must_die ? undef : $UseHup;
    master_on() if $UseHup;    # reloading needs a master process

    if (defined(my $spec = $block->skip_nginx)) {
        my ($skip, $n, $reason) = nginx_version_skip($name, $spec);
        if ($skip) {
            for (1 .. $RepeatEach) {
                SKIP: { Test::More::skip("$name - $reason", $n) }
            }
            return;
        }
    }

    my $tb = Test::More->builder;
    my $first_test = $tb->current_test;
    my $go = 1;
    if (defined $config) {
        if (!defined $PrevConfig || $config ne $PrevConfig || $ForceRestart) {
            $PrevConfig = $config;
            $go = start_nginx($block, $config, $first_time);
        }
    } elsif (!defined $PrevConfig) {
        bail_out("$name - No '--- config' section specified and could not get previous one.");
    } else {
        $BlockLogStart = -s $ErrLogFile || 0;    # goes on with the running nginx
    }

    if ($go) {
        if (my $init = $block->init) {
            eval $init;
            bail_out("$name - init failed: $@") if $@;
        }
        $ErrLogFilePos = 0;
        for my $i (0 .. $RepeatEach - 1) {
            write_user_files($block) if $i;
            $RunTestHelper->($block, $i);
        }
        check_nginx_alive($name) if $NginxStarted;
    }

    if (grep { !$_ } ($tb->summary)[$first_test .. $tb->current_test - 1]) {
        Test::More::diag("$name - error.log (tail, without [debug] lines):\n",
                         log_tail($BlockLogStart, 25));
    }
}

# a crashed worker, or a master gone, fails the block
sub check_nginx_alive ($) {
    my $name = shift;
    open my $in, '<', $ErrLogFile or return;
    seek $in, $BlockLogStart, 0 if $BlockLogStart <= (-s $ErrLogFile || 0);
    while (my $line = <$in>) {
        # SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGSYS or a core dump;
        # not a worker killed on purpose (say kill -9 in --- init)
        next if $line !~ /exited on signal (?:4|6|7|8|11|31)\b|core dumped/;
        chomp $line;
        Test::More::fail("$name - nginx crashed: $line");
    }
    if (!nginx_pid()) {
        Test::More::fail("$name - the nginx master process is gone");
        undef $NginxStarted;
    }
}

END {
    local $?;
    stop_nginx() if !$ENV{TEST_NGINX_NO_CLEAN} && -f $PidFile;
}

1;
