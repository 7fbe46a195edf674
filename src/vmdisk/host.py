"""Host: the objects of one instances_path, wired once from Settings. The API's front door."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import os
import secrets
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

from vmdisk import inventory, lifecycle
from vmdisk.backends import BackendDeps
from vmdisk.backends.base import VolumePrune
from vmdisk.boot import STOP_GRACE, BootResult, Stream, boot_libvirt, boot_qemu
from vmdisk.errors import InvalidRequest, NotSupported, VmdiskError
from vmdisk.fsutil import direct_io_supported, ensure_real_dir
from vmdisk.imagecache import snapshot
from vmdisk.imagecache.aliases import AliasStore, check_alias
from vmdisk.imagecache.bounds import DownloadPolicy
from vmdisk.imagecache.cleaner import CleanupPlan, CleanupPolicy, CleanupResult
from vmdisk.imagecache.dedup import DedupIntake
from vmdisk.imagecache.listing import ImageRow, find_image, image_rows
from vmdisk.imagecache.manage import (
    Overlays,
    RefreshResult,
    overlays_on,
    refresh_image,
    remove_image,
)
from vmdisk.imagecache.names import ImageNames
from vmdisk.imagecache.pins import flavor_too_small
from vmdisk.imagecache.probe import Probe, probe_image
from vmdisk.imagecache.registry import SourceRegistry, resolved
from vmdisk.imagecache.store import CachedImage, ImageCache, ImageRequest, ResolvedImage
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.imagecache.verify import Verdict, verify_cache
from vmdisk.inject import check_injection_policy
from vmdisk.instances import Instance, InstanceStore
from vmdisk.inventory import CacheListing
from vmdisk.libvirt import probe
from vmdisk.libvirt.domain import Domain, HostFacts, instance_domain
from vmdisk.locks import Locks
from vmdisk.model import (
    BackendName,
    BootOptions,
    ConfigDriveSpec,
    InstancePlan,
    InstanceSpec,
    validate_name,
    validate_uuid,
)
from vmdisk.plan import choose_backend, plan_disks
from vmdisk.progress import NoProgress, Progress
from vmdisk.provision import Provisioner, write_domain_xml
from vmdisk.request import image_request
from vmdisk.runtime.guests import Guests, StartResult, StopResult, WaitResult
from vmdisk.runtime.ssh import SshAccess
from vmdisk.runtime.state import VmStatus
from vmdisk.settings import Settings
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import CommandResult, Limits, Runner, SubprocessRunner
from vmdisk.units import GiB


@dataclasses.dataclass(frozen=True, slots=True)
class PruneOutcome:
    """One prune pass: the `_base` plan and result (None on a dry run), and the backend's."""

    plan: CleanupPlan
    result: CleanupResult | None
    volumes: VolumePrune


class Host:
    """Everything vmdisk does on this host. Build one per process and reuse it."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.runner: Runner = runner or SubprocessRunner()
        self.progress = progress or NoProgress()
        lib = settings.libvirt
        self.limits = Limits(lib.images_address_space_limit, lib.images_cpu_time_limit)
        self.qemu = QemuImg(self.runner, self.limits)
        self.locks = Locks(settings.locks_dir)
        intake = DedupIntake(
            settings.base_dir,
            self.qemu,
            locks=self.locks,
            force_raw=settings.force_raw_images,
            max_virtual_size=settings.image_cache.max_virtual_size,
            progress=self.progress,
            download=DownloadPolicy(
                settings.image_cache.download_min_rate,
                settings.image_cache.download_rate_window,
                settings.image_cache.download_deadline,
            ),
        )
        self.cache = ImageCache(
            settings.base_dir,
            self.locks,
            self.qemu,
            intake=intake,
            in_use=lambda name: name in inventory.bases_in_use(self.store, settings.base_dir),
        )
        self.sources = SourceRegistry.from_settings(settings)
        self.aliases = AliasStore(settings.base_dir, self.locks)
        self.sources.names = ImageNames(settings.base_dir, self.aliases)
        self.sources.max_virtual_size = settings.image_cache.max_virtual_size
        self.sources.ss_keyring = settings.image_cache.simplestreams_keyring
        self.sources.ss_runner = self.runner
        self.sources.mirrors = settings.image_cache.mirrors
        self.templates = TemplateCache(settings.base_dir, self.locks)
        reserved = frozenset({settings.image_cache.subdirectory_name, "locks", inventory.REGISTRY})
        self.store = InstanceStore(settings.instances_path, self.locks, reserved)
        self.provisioner = Provisioner(
            self.cache,
            self.templates,
            self.store,
            self.qemu,
            self.runner,
            self.host_facts,
            BackendDeps(self.qemu, self.runner, self.templates, self.locks, lib),
        )
        self._facts: HostFacts | None = None
        self._prepared = False

    def host_facts(self) -> HostFacts:
        """KVM or TCG, O_DIRECT, machine and network: decided once per process."""
        if self._facts is None:
            lib = self.settings.libvirt
            self.prepare()
            self._facts = HostFacts(
                virt_type=probe.virt_type(self.runner, lib.virt_type, cache_dir()),
                machine=lib.machine_type,
                direct_io=direct_io_supported(self.settings.instances_path),
                interface=lib.network,
            )
        return self._facts

    def resolve(self, request: ImageRequest) -> ResolvedImage:
        """Resolve an image once for this command: its source opened, its facts merged."""
        return self.sources.resolve(request)

    def prepare(self) -> None:
        """Create instances_path, _base and locks; refuse any of them being a symlink."""
        if self._prepared:
            return
        ensure_real_dir(self.settings.instances_path)
        ensure_real_dir(self.settings.base_dir)
        ensure_real_dir(self.settings.locks_dir)
        self._prepared = True

    def fetch_image(self, request: ImageRequest) -> CachedImage:
        image = self.resolve(request)
        self.prepare()
        return self.cache.ensure(image)

    def resolve_boot_files(
        self, boot_files: Mapping[str, ImageRequest] | None
    ) -> dict[str, ResolvedImage]:
        """Kernel/ramdisk requests resolved, each with its kind set from its role."""
        return {
            name: self.resolve(dataclasses.replace(r, kind=name))
            for name, r in (boot_files or {}).items()
        }

    def plan(
        self,
        spec: InstanceSpec,
        image: ResolvedImage,
        boot_files: Mapping[str, ResolvedImage] | None = None,
    ) -> InstancePlan:
        check_injection_policy(spec.injection, self.settings.libvirt)
        boot_ids = {name: r.image_id for name, r in (boot_files or {}).items()}
        return plan_disks(spec, self.settings, image.image_id, boot_ids, image.location)

    def create_instance(
        self,
        spec: InstanceSpec,
        request: ImageRequest,
        boot_files: Mapping[str, ImageRequest] | None = None,
    ) -> Instance:
        """Create an instance; `boot_files` maps "kernel"/"ramdisk" to their image requests."""
        check_injection_policy(spec.injection, self.settings.libvirt)
        boot = self.resolve_boot_files(boot_files)
        image = self.resolve(request)
        plan = self.plan(spec, image, boot)
        self.prepare()
        return self.provisioner.create(plan, image, boot)

    def describe(self, inst: Instance) -> dict[str, Any]:
        with self.provisioner.backend(inst.record.backend) as backend:
            return lifecycle.describe(inst, backend)

    def instances(self) -> list[Instance]:
        return self.store.all()

    def instance(self, ref: str) -> Instance:
        return self.store.find(ref)

    def delete_instance(self, ref: str, *, force: bool = False) -> Instance:
        """Refuses a running instance; `force` destroys its guest first (its disks are about to
        go, so there is nothing to flush)."""
        inst = self.store.find(ref)
        if force and self.guests.status(inst).state.active:
            self.guests.stop(inst, force=True)
        self.guests.refuse_running(inst, "delete it")
        self.guests.forget(inst)
        with self.provisioner.backend(inst.record.backend) as backend:
            backend.remove(list(inst.record.all_disks()))
        self.store.delete(inst)
        return inst

    def resize_instance(self, ref: str, root_gb: int | None, ephemeral_gb: int | None) -> Instance:
        inst = self.store.find(ref)
        self.guests.refuse_running(inst, "resize it")
        inst = lifecycle.resize(self.provisioner, inst, root_gb, ephemeral_gb)
        write_domain_xml(inst, self.host_facts())
        return inst

    def rescue_instance(
        self,
        ref: str,
        request: ImageRequest | None,
        boot_files: Mapping[str, ImageRequest] | None = None,
    ) -> Instance:
        inst = self.store.find(ref)
        self.guests.refuse_running(inst, "rescue it")
        if request is None:
            # A cached id resolves by itself (the recorded source may be a relative path).
            cached = self.cache.lookup(inst.record.image_base) is not None
            source = inst.record.image_id if cached else inst.record.image_source
            request = ImageRequest(source or inst.record.image_id, image_id=inst.record.image_id)
        # Resolved like a create: a glance:// rescue image keeps Glance's checksum and format.
        image = self.resolve(request)
        boot = self.resolve_boot_files(boot_files)
        inst = lifecycle.rescue(self.provisioner, inst, image, boot)
        write_domain_xml(inst, self.host_facts())
        return inst

    def unrescue_instance(self, ref: str) -> Instance:
        inst = self.store.find(ref)
        self.guests.refuse_running(inst, "unrescue it")
        inst = lifecycle.unrescue(self.provisioner, inst)
        write_domain_xml(inst, self.host_facts())
        return inst

    def domain(
        self,
        ref: str,
        *,
        rescue: bool | None = None,
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str | None = None,
    ) -> Domain:
        inst = self.store.find(ref)
        rescuing = inst.record.rescue is not None if rescue is None else rescue
        return instance_domain(
            inst, self.host_facts(), rescue=rescuing, kernel=kernel, initrd=initrd, cmdline=cmdline
        )

    def boot(
        self,
        ref: str,
        options: BootOptions,
        stream: Stream | None = None,
        *,
        grace: float = STOP_GRACE,
    ) -> BootResult:
        """The smoke test; a guest still running at the end gets `grace` s to power off."""
        inst = self.store.find(ref)
        self.guests.refuse_running(inst, "boot it")
        self._check_disks(inst)
        domain = self.domain(
            ref,
            rescue=options.rescue,
            kernel=options.kernel,
            initrd=options.initrd,
            cmdline=options.cmdline,
        )
        if options.via == "libvirt":
            return boot_libvirt(
                self.runner,
                domain,
                uri=options.uri,
                timeout=options.timeout,
                wait_for=options.wait_for,
                keep=options.keep,
                stream=stream,
                grace=grace,
            )
        return boot_qemu(
            self.runner,
            domain,
            timeout=options.timeout,
            wait_for=options.wait_for,
            stream=stream,
            grace=grace,
        )

    # ------------------------------------------------ running guests (issue 18): one block
    libvirt_uri = "qemu:///system"

    @functools.cached_property
    def guests(self) -> Guests:
        return Guests(self.runner, self.settings.libvirt.network, self.libvirt_uri)

    def _check_disks(self, inst: Instance) -> None:
        with self.provisioner.backend(inst.record.backend) as backend:
            for disk in inst.record.all_disks():
                backend.check_present(disk, self.settings.base_dir)

    def start(self, ref: str, via: str | None = None) -> StartResult:
        """Start the guest, detached: via libvirt (defined persistently) or qemu; None picks
        libvirt when its socket answers, else qemu (the result says which and why)."""
        inst = self.store.find(ref)
        self._check_disks(inst)
        return self.guests.start(inst, self.domain(ref), via)

    def stop(self, ref: str, *, force: bool = False, timeout: float = 120) -> StopResult:
        return self.guests.stop(self.store.find(ref), force=force, timeout=timeout)

    def status(self, ref: str) -> VmStatus:
        return self.guests.status(self.store.find(ref))

    def statuses(self) -> dict[str, VmStatus]:
        """Every instance's state by uuid, for `list`."""
        return {i.record.uuid: self.guests.status(i) for i in self.store.all()}

    def address(self, ref: str) -> tuple[str, int]:
        """Where the guest's ssh is: (host, port)."""
        return self.guests.address(self.store.find(ref))

    def remember_ssh(self, ref: str, user: str | None, public_keys: list[Path]) -> None:
        """Who `ssh` logs in as and with which key (the private half of a `--ssh-key`)."""
        inst = self.store.find(ref)
        keys = tuple(str(k.absolute()) for k in public_keys)
        SshAccess(user, keys).save(inst.path)

    def ssh_argv(
        self,
        ref: str,
        command: tuple[str, ...] = (),
        *,
        user: str | None = None,
        identity: Path | None = None,
        insecure: bool = False,
    ) -> list[str]:
        return self.guests.ssh_argv(
            self.store.find(ref), command, user=user, identity=identity, insecure=insecure
        )

    def ssh(
        self, ref: str, command: tuple[str, ...], *, insecure: bool = False, timeout: float = 300
    ) -> CommandResult:
        """Run a command in the guest; its exit code is in the result (never raised)."""
        argv = self.ssh_argv(ref, command, insecure=insecure)
        return self.runner.run(argv, timeout=timeout, check=False)

    def wait_ssh(self, ref: str, *, timeout: float = 600, insecure: bool = False) -> WaitResult:
        return self.guests.wait_ssh(self.store.find(ref), timeout=timeout, insecure=insecure)

    def cleanup_policy(self) -> CleanupPolicy:
        c = self.settings.image_cache
        return CleanupPolicy(
            remove_unused=c.remove_unused_base_images,
            original_min_age=c.remove_unused_original_minimum_age_seconds,
            resized_min_age=c.remove_unused_resized_minimum_age_seconds,
            template_min_age=c.remove_unused_template_minimum_age_seconds,
            temporary_min_age=c.remove_temporary_minimum_age_seconds,
            max_size=c.max_size,
        )

    def prune(
        self, *, dry_run: bool = False, policy: CleanupPolicy | None = None
    ) -> tuple[CleanupPlan, CleanupResult | None]:
        """One pass of the image cache manager; see imagecache/cleaner.py for the protocol."""
        outcome = self.prune_all(dry_run=dry_run, policy=policy)
        return outcome.plan, outcome.result

    def prune_all(
        self, *, dry_run: bool = False, policy: CleanupPolicy | None = None
    ) -> PruneOutcome:
        """`cache prune`: `_base` first, then the copies of bases the configured backend keeps
        elsewhere (thin base LVs), which follow their entries."""
        self.prepare()
        policy = policy or self.cleanup_policy()
        base_dir = self.settings.base_dir
        plan, result = inventory.prune(self.store, base_dir, self.locks, policy, dry_run=dry_run)
        in_use = inventory.bases_in_use(self.store, base_dir)  # again: builds may have begun
        with self.provisioner.backend(choose_backend(None, self.settings)) as backend:
            volumes = backend.prune_bases(
                plan, in_use, base_dir, remove_unused=policy.remove_unused, dry_run=dry_run
            )
        return PruneOutcome(plan, result, volumes)

    def cache_listing(self) -> CacheListing:
        """`cache list`: each base with its record, allocation, last use and users."""
        return inventory.list_cache(self.store, self.settings.base_dir)

    def verify_cache(self) -> list[Verdict]:
        self.prepare()
        return verify_cache(self.cache)

    # --- the image plane: list, show, rm, refresh, aliases (imagecache/listing, manage) ---

    def images(self) -> list[ImageRow]:
        """`image list`: every cached image with aliases, users and sharing."""
        users = inventory.users_by_base(self.store, self.settings.base_dir)
        return image_rows(self.settings.base_dir, self.aliases.all(), users)

    def image(self, ref: str) -> ImageRow:
        """An image by alias, id, or unique prefix of its entry name or sha256."""
        return find_image(ref, self.images(), self.aliases.all())

    def remove_image(self, ref: str) -> tuple[ImageRow, list[str]]:
        """Remove an unused image and its aliases; refused (ImageInUse) while in use."""
        row = self.image(ref)
        base_dir = self.settings.base_dir
        removed = remove_image(
            self.cache, self.aliases, row, lambda: inventory.bases_in_use(self.store, base_dir)
        )
        return row, removed

    def refresh_image(self, ref: str) -> RefreshResult:
        """Fetch an image's source again; instances keep the content they were made from."""
        row = self.image(ref)
        if row.image_id is None:
            raise InvalidRequest(f"{ref} is a retired base; it has no source to refresh from")
        r = row.record
        if r.source.startswith(snapshot.SNAPSHOT_SCHEME):
            raise InvalidRequest(f"{ref} is a snapshot ({r.source}); there is nothing to re-fetch")
        request = ImageRequest(r.source, image_id=r.image_id, kind=r.kind)
        image = resolved(request, self.sources.open_request(request))
        self.prepare()

        def overlays() -> Overlays:
            ours, foreign = inventory.instance_qcow2_disks(self.store)
            return overlays_on(row.path, ours, foreign)

        return refresh_image(self.cache, row, image, overlays, self.runner)

    def probe_image(self, request: ImageRequest) -> Probe:
        """`--dry-run`: format, sizes and whether it is cached; reads at most the first MiB."""
        return self.probe_resolved(self.resolve(request))

    def probe_resolved(self, image: ResolvedImage, root_gb: int | None = None) -> Probe:
        """probe_image for an image already resolved; with `root_gb` (a flavor's root disk,
        0 = the image's size) a root smaller than the image is refused now, as create would
        refuse it, but without downloading anything (`create --dry-run`)."""
        found = probe_image(image, self.cache, self.settings.image_cache.max_virtual_size)
        if root_gb and found.virtual_size is not None and found.virtual_size > root_gb * GiB:
            raise flavor_too_small(found.virtual_size, root_gb * GiB)
        return found

    def snapshot_instance(self, ref: str, image_id: str, alias: str | None = None) -> CachedImage:
        """The instance's root disk as a new raw base `image_id` (refused while running)."""
        inst = self.store.find(ref)
        if alias is not None:
            check_alias(alias)
        request = image_request("-", image_id, None, None, None)
        names = self.sources.names
        if names is not None and (names.record(image_id) or self.aliases.get(image_id)):
            raise InvalidRequest(f"image id {image_id} is already used", reason="id-conflict")
        self.prepare()
        snapshot.refuse_if_running(inst.record, inst.path)
        tmp = snapshot.convert_root(self.runner, inst.record, inst.path)
        try:
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            label = f"{snapshot.SNAPSHOT_SCHEME}{inst.record.name}/{inst.record.uuid}@{stamp}"
            request = dataclasses.replace(request, source=str(tmp), declared_format="raw")
            cached = self.cache.ensure(resolved(request, snapshot.SnapshotSource(tmp, label)))
        finally:
            tmp.unlink(missing_ok=True)
        if alias is not None:
            self.aliases.set(alias, image_id)
        return cached

    def clone_instance(self, ref: str, name: str, uuid: str | None = None) -> Instance:
        """A new instance (new uuid, MAC, config drive) whose disks start as NAME's: the root
        an overlay over (qcow2) or a copy of (flat) a snapshot of NAME's root, the
        ephemeral disks copied; swap is made new."""
        r = self.store.find(ref).record
        if r.backend not in (BackendName.QCOW2, BackendName.FLAT):
            raise NotSupported(f"clone of {r.backend} instances is not supported yet")
        new_uuid = validate_uuid(uuid) if uuid else str(uuidlib.uuid4())
        validate_name(name)
        snap_id = f"clone-of:{r.uuid}:{new_uuid}"
        self.snapshot_instance(ref, snap_id)
        drive = None
        if r.config_drive is not None:
            user_data, keys = snapshot.drive_contents(r)
            drive = ConfigDriveSpec(
                user_data=user_data,
                ssh_keys=keys,
                admin_pass=secrets.token_urlsafe(12),
                seed=r.config_drive.seed,
                format=r.config_drive.format,
            )
        spec = InstanceSpec(
            name=name,
            uuid=new_uuid,
            flavor=r.flavor,
            ephemerals=tuple(
                (d.size or 0) // GiB for d in r.disks if d.name.startswith("disk.eph")
            ),
            os_type=r.os_type,
            backend=r.backend,
            config_drive=drive,
            cmdline=r.cmdline,
        )
        boot = {
            role: ImageRequest(b.image_id, image_id=b.image_id)
            for role, b in (("kernel", r.kernel), ("ramdisk", r.ramdisk))
            if b is not None
        }
        try:
            inst = self.create_instance(spec, ImageRequest(snap_id, image_id=snap_id), boot)
        except BaseException:
            with contextlib.suppress(VmdiskError):
                self.remove_image(snap_id)  # the snapshot was made for this clone only
            raise
        for disk in snapshot.ephemeral_disks(r):
            src, _ = snapshot.file_disk(r, disk.name)
            dst, _ = snapshot.file_disk(inst.record, disk.name)
            snapshot.copy_disk(src, dst)
        return inst

    def export_image(self, ref: str, dest: Path, fmt: str, compress: bool = False) -> Path:
        """Write a cached image to `dest` as raw or qcow2, to carry it to another host."""
        row = self.image(ref)
        with self.locks.shared(row.name):
            return snapshot.export_image(
                self.runner, row.path, row.record.format, dest, fmt, compress
            )

    def set_alias(self, name: str, ref: str) -> tuple[str, str | None]:
        """Point alias `name` at a cached image; returns (image id, previous target)."""
        check_alias(name)
        row = self.image(ref)
        if row.image_id is None:
            raise InvalidRequest(f"{ref} is a retired base; aliases name live images")
        other = self.sources.names.record(name) if self.sources.names else None
        if other is not None and other.image_id != row.image_id:
            raise InvalidRequest(
                f"{name} is already the id of another cached image (from {other.source})",
                reason="id-conflict",
            )
        self.prepare()
        return row.image_id, self.aliases.set(name, row.image_id)

    def remove_alias(self, name: str) -> str:
        return self.aliases.remove(name)


def cache_dir() -> Path:
    """Host-wide cache for probe answers: /var/cache/vmdisk for root, else the user's."""
    if os.geteuid() == 0:
        return Path("/var/cache/vmdisk")
    return Path(platformdirs.user_cache_dir("vmdisk"))
