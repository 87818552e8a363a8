// `ferry guest ...`: tools for the project's test guests (check a probe disk, write a bootblock).
import fsp from 'node:fs/promises';
import type { Command } from '@commander-js/extra-typings';
import { Option } from '@commander-js/extra-typings';
import { IMAGE_FORMATS } from '../../qemu/img.js';
import { FerryError } from '../../errors.js';
import { verifyDiskImage, highestAckIn } from '../../../guest/records.js';
import { writeBootblockImage } from '../../../guest/bootblock.js';

export function registerGuest(program: Command): void {
  const guest = program.command('guest').description("tools for Ferry's test guests");
  guest
    .command('verify-disk')
    .description("check a probe guest's data disk: every record it acknowledged on its serial console must be intact")
    .argument('<image>', 'disk image (qcow2, raw, vhdx or vpc)')
    .addOption(new Option('--format <format>', 'image format').choices(IMAGE_FORMATS))
    .option('--serial <log...>', 'serial logs whose ferry-ack lines must be on the disk')
    .option('--json', 'print the report as JSON')
    .action(async (image, o) => {
      const logs = await Promise.all((o.serial ?? []).map((f) => fsp.readFile(f, 'utf8')));
      const ack = logs.length ? highestAckIn(logs) : null;
      const r = await verifyDiskImage(image, {
        format: o.format,
        highestAck: ack ?? undefined,
      });
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else {
        process.stdout.write(
          `records: ${r.lowestExpected}..${r.highestSeq} (${r.nslots} slots), contiguous to ${r.highestContiguous}, ` +
            `highest ack ${r.highestAck ?? '-'}\n`,
        );
        for (const p of r.problems) process.stdout.write(`  ${p}\n`);
        process.stdout.write(r.ok ? 'ok: every acknowledged record is on the disk\n' : 'FAILED\n');
      }
      if (!r.ok)
        throw new FerryError('E_DATA_LOST', `Cannot confirm the disk ${image}: ${r.problems[0] ?? 'records missing'}`);
    });
  guest
    .command('bootblock')
    .description('write the 512-byte memory-pattern guest as a bootable raw image')
    .argument('<file>', 'output image')
    .action(async (file) => {
      await writeBootblockImage(file);
    });
}
